"""Exercise tables, one module per notebook (``nb00``, ``nb01``, ...); see ``numlab.check``."""
