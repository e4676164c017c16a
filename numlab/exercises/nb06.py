"""Exercises of notebooks/06_debugging_numerics.ipynb; each answer is computed by numlab."""
from numlab.check import Exercise


def _unguarded_nan_weights():
    from numlab.debugging import nanguard_run

    return nanguard_run().nonfinite_params_unguarded


def _overfit_best_step(seed: int = 1):
    import numpy as np

    from numlab.debugging import pathology_run

    run = pathology_run("overfitting", seed=seed)
    return int(run.steps[int(np.argmin(run.val_loss))])


def _traced_finite_fraction():
    from numlab.debugging import forward_nan_model, trace_nonfinite

    model, x = forward_nan_model(seed=3)
    with trace_nonfinite(model) as trace:
        model(x)
    return trace.first.output[0].finite_fraction


def _entropy_blamed_node():
    from numlab.debugging import anomaly_demo

    return anomaly_demo("entropy", measure=False).report.function


def _symptom_count(seed: int = 3):
    from numlab.debugging import PATHOLOGIES, pathology_run

    return sum(pathology_run(p, seed=seed).symptom for p in PATHOLOGIES)


EXERCISES = {
    "06.1": Exercise(
        prompt="Run nanguard_run() without its guard: how many of the model's weights and "
               "biases are NaN when the 60 batches are done?",
        expected=_unguarded_nan_weights,
        rtol=0,
        hints=(
            "A NaN in the loss reaches every gradient; what does one optimiser step do with a NaN "
            "gradient?",
            "One NaN loss, one backward, one optimiser step: which entries does SGD touch? "
            "Count the parameters of Linear(6,16) and Linear(16,1).",
        ),
    ),
    "06.2": Exercise(
        prompt="In pathology_run('overfitting', seed=1), at which training step is the "
               "validation loss lowest (the step early stopping would keep)? The run evaluates "
               "every 5 steps: answer with the step, not the evaluation's number.",
        expected=_overfit_best_step,
        rtol=0,
        hints=(
            "Early stopping keeps the step with the best validation loss, not the last one.",
            "Find the evaluation with the lowest validation loss, then the training step it "
            "was taken at (run.steps lists them).",
        ),
    ),
    "06.3": Exercise(
        prompt="Trace forward_nan_model(seed=3) with trace_nonfinite: what fraction of the "
               "first non-finite module's output entries is finite?",
        expected=_traced_finite_fraction,
        rtol=1e-9,
        hints=(
            "The first module to output a non-finite value does so only for some of its inputs.",
            "log(x) is finite exactly where x > 0; the first event's output statistics say "
            "how much of it is.",
        ),
    ),
    "06.4": Exercise(
        prompt="Which backward node does anomaly mode blame in anomaly_demo('entropy')? "
               "(its name as a string, e.g. 'AddBackward0')",
        expected=_entropy_blamed_node,
        hints=(
            "Anomaly mode names the backward node whose output first holds a NaN; which operation "
            "in the entropy has a 0 * inf in its derivative?",
            "Run the demo with anomaly mode on, let it raise, and read the backward node that the "
            "error message names (its traceback points at the forward line that made it).",
        ),
    ),
    "06.5": Exercise(
        prompt="The page ran seeds 0, 1 and 2. With seed 3, how many of the five runs in "
               "PATHOLOGIES show 'training loss falls while validation diverges' (CurveRun.symptom)?",
        expected=_symptom_count,
        rtol=0,
        hints=(
            "Several pathologies look alike on the training curve; the symptom is read off the "
            "validation curve.",
            "Look at the leak run's validation curve: is it diverging, or too good?",
        ),
    ),
}
