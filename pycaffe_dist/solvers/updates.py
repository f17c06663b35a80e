"""Update values: the one thing solver types differ in.

Each rule works on whole flat buffers: `g` is the (normalized, regularized)
gradient, `rate` the per-element learning rate (rate * lr_mult), `h` the
list of history buffers, `tmp` a scratch buffer; it leaves the step to
subtract from the weights in `g`. Formulas are Caffe's
(../shared/formats/README.md). On CuPy arrays Solver.apply_update runs the
same formulas fused into one kernel per type (ops.kernels.SOLVER_RULES; a
test checks each against these).
"""


def sgd(xp, p, g, rate, h, tmp, it):
    # h = rate*g + momentum*h; g = h
    xp.multiply(g, rate, out=tmp)
    h[0] *= p.momentum
    h[0] += tmp
    g[...] = h[0]


def nesterov(xp, p, g, rate, h, tmp, it):
    # h_prev = h; h = momentum*h + rate*g; g = (1+momentum)*h - momentum*h_prev
    xp.multiply(h[0], p.momentum, out=tmp)        # momentum * h_prev
    h[0] *= p.momentum
    xp.multiply(g, rate, out=g)
    h[0] += g
    xp.multiply(h[0], 1.0 + p.momentum, out=g)
    g -= tmp


def adagrad(xp, p, g, rate, h, tmp, it):
    xp.multiply(g, g, out=tmp)
    h[0] += tmp
    xp.sqrt(h[0], out=tmp)
    tmp += p.delta
    xp.divide(g, tmp, out=g)
    g *= rate


def rmsprop(xp, p, g, rate, h, tmp, it):
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - p.rms_decay
    h[0] *= p.rms_decay
    h[0] += tmp
    xp.sqrt(h[0], out=tmp)
    tmp += p.delta
    xp.divide(g, tmp, out=g)
    g *= rate


def adadelta(xp, p, g, rate, h, tmp, it):
    m = p.momentum
    grad_sq, update_sq = h
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - m
    grad_sq *= m
    grad_sq += tmp
    # u = g * sqrt((update_sq + delta) / (grad_sq + delta))
    xp.add(update_sq, p.delta, out=tmp)
    tmp /= grad_sq + p.delta
    xp.sqrt(tmp, out=tmp)
    g *= tmp
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - m
    update_sq *= m
    update_sq += tmp
    g *= rate


def adam(xp, p, g, rate, h, tmp, it):
    b1, b2 = p.momentum, p.momentum2
    m, v = h
    t = it + 1
    correction = (1.0 - b2 ** t) ** 0.5 / (1.0 - b1 ** t)
    m *= b1
    xp.multiply(g, 1.0 - b1, out=tmp)
    m += tmp
    v *= b2
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - b2
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += p.delta
    xp.divide(m, tmp, out=g)
    g *= rate
    g *= correction


# type string -> (rule, number of history buffers)
RULES = {"SGD": (sgd, 1), "Nesterov": (nesterov, 1), "AdaGrad": (adagrad, 1),
         "RMSProp": (rmsprop, 1), "AdaDelta": (adadelta, 2), "Adam": (adam, 2)}
