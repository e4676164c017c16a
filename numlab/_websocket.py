"""The kernel's websocket to the browser, without Nagle's algorithm.

Every change of a widget's control comes back to the browser as a burst of small messages
(kernel busy, the echo of the new value, the frame, the status line, kernel idle). Jupyter
Server writes them to a socket that keeps Nagle's algorithm on (Tornado leaves
``set_nodelay`` to the application), so a small message written while an earlier one is
not yet acknowledged waits for the acknowledgement, which the other side may delay by up to
40 ms. Measured here: 3 to 5 of 20 kernel requests from JupyterLab in Chromium waited 40 ms
for their reply (none with this class), and a drag's last frame came 40-60 ms later.
``tools/jupyter_settings.py`` makes this connection class the one JupyterLab, the server's
``voila/render`` pages and ``voila`` itself use.
"""
from __future__ import annotations

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayConnection(ZMQChannelsWebsocketConnection):
    """Jupyter Server's kernel websocket connection with ``TCP_NODELAY`` on its socket."""

    def connect(self):
        self.websocket_handler.set_nodelay(True)
        return super().connect()
