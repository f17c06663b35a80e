"""Learning-rate policies: one small function per SolverParameter.lr_policy."""
import math


def _fixed(p, it, state):
    return p.base_lr


def _step(p, it, state):
    return p.base_lr * p.gamma ** math.floor(it / p.stepsize)


def _exp(p, it, state):
    return p.base_lr * p.gamma ** it


def _inv(p, it, state):
    return p.base_lr * (1.0 + p.gamma * it) ** (-p.power)


def _multistep(p, it, state):
    # Caffe advances current_step as iterations pass; it is saved in the solverstate.
    while state["current_step"] < len(p.stepvalue) and it >= p.stepvalue[state["current_step"]]:
        state["current_step"] += 1
    return p.base_lr * p.gamma ** state["current_step"]


def _poly(p, it, state):
    return p.base_lr * (1.0 - float(it) / p.max_iter) ** p.power


def _sigmoid(p, it, state):
    return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize))))


POLICIES = {"fixed": _fixed, "step": _step, "exp": _exp, "inv": _inv,
            "multistep": _multistep, "poly": _poly, "sigmoid": _sigmoid}

# Fields each policy reads, so a missing one is reported before training starts.
REQUIRED = {"step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
            "multistep": ("gamma", "stepvalue"), "poly": ("power", "max_iter"),
            "sigmoid": ("gamma", "stepsize")}


def check(param, where):
    name = param.lr_policy or "fixed"
    if name not in POLICIES:
        raise ValueError("%s: unknown lr_policy %r (known: %s)"
                         % (where, name, ", ".join(sorted(POLICIES))))
    for field in REQUIRED.get(name, ()):
        present = len(param.stepvalue) if field == "stepvalue" else param.HasField(field)
        if not present:
            raise ValueError("%s: lr_policy %r needs %s" % (where, name, field))
    if name == "step" and param.stepsize <= 0:
        raise ValueError("%s: stepsize must be positive" % where)


def learning_rate(param, it, state):
    """The rate at iteration `it` (Caffe's GetLearningRate)."""
    return POLICIES[param.lr_policy or "fixed"](param, it, state)
