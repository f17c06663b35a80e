"""The step loop every solver shares: test, forward/backward, display, update, snapshot."""
import functools
import logging
import math
import os
import time

import numpy

from .. import backend
from ..net import Net, TEST, TRAIN
from ..ops import kernels, threads
from ..proto import caffe_pb2, io as proto_io
from ..proto.errors import ProtoError
from . import lr_policy, numerics, updates

log = logging.getLogger("pycaffe_dist")

# Elements per update block: its gradient, weights, two histories and the
# scratch (5 x 512 KiB in float32) fit in a 4 MiB L2.
_BLOCK = 1 << 17


def _update_blocks(learnable, scalar):
    """The flat buffer as (start, stop, lr_mult, decay_mult) blocks of at most
    _BLOCK elements, each within a run of parameters sharing multipliers."""
    runs = []
    for p in sorted(learnable, key=lambda p: p.offset):
        mults = (scalar(p.lr_mult), scalar(p.decay_mult))
        stop = p.offset + p.blob.count
        if runs and runs[-1][1] == p.offset and runs[-1][2:] == mults:
            runs[-1][1] = stop
        else:
            runs.append([p.offset, stop, *mults])
    blocks = []
    for start, stop, lr_mult, decay_mult in runs:
        for b in range(start, stop, _BLOCK):
            blocks.append((b, min(b + _BLOCK, stop), lr_mult, decay_mult))
    return blocks


def lane_blocks(blocks, lanes):
    """`blocks` cut into `lanes` runs of nearly equal element counts (a block
    across a boundary is cut there): runs of whole blocks gave LeNet's two
    lanes 288K and 144K elements (ip1's weights are 400K of its 431K), the
    second lane waiting for the first."""
    total = sum(stop - start for start, stop, _, _ in blocks)
    bounds = [total * k // lanes for k in range(1, lanes)]
    runs, run, seen = [], [], 0
    for start, stop, lr_mult, decay_mult in blocks:
        while bounds and seen + (stop - start) > bounds[0]:
            cut = start + bounds.pop(0) - seen
            if cut > start:
                run.append((start, cut, lr_mult, decay_mult))
            seen += cut - start
            start = cut
            runs.append(run)
            run = []
        if stop > start:
            run.append((start, stop, lr_mult, decay_mult))
            seen += stop - start
    runs.append(run)
    return [r for r in runs if r] or [[]]


STOP, SNAPSHOT = "stop", "snapshot"


class SolverError(ProtoError):
    """A solver definition that cannot be used; names the solver file."""


class Callback:
    """Hooks a parallel strategy plugs in (DESIGN.md, contract 5)."""

    def on_start(self, solver):
        pass

    def on_gradients_ready(self, solver):
        pass


def _resolve(path, base_dir):
    """Caffe resolves paths against the working directory; also try the solver's folder."""
    if not path or os.path.isabs(path) or os.path.exists(path) or not base_dir:
        return path
    beside = os.path.join(base_dir, path)
    return beside if os.path.exists(beside) else path


class Solver:
    """Trains a net as a SolverParameter says; subclasses are chosen by `type`."""

    def __init__(self, param, path="<solver>", dtype=numpy.float32, train_net=None):
        if isinstance(param, str):
            path, param = param, proto_io.read_solver(param)
        self.param = param
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path)) if path != "<solver>" else None
        self.type = param.type or "SGD"
        if self.type not in updates.RULES:
            raise SolverError("%s: unknown solver type %r (known: %s)"
                              % (path, self.type, ", ".join(sorted(updates.RULES))))
        self.rule, n_history = updates.RULES[self.type]
        try:
            lr_policy.check(param, path)
        except ValueError as e:
            raise SolverError(str(e)) from None
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed)
        self.dtype = numpy.dtype(dtype)
        self.iter = 0
        self.lr_state = {"current_step": 0}
        self.callbacks = []
        self.action_request = None         # () -> None | STOP | SNAPSHOT (signals)
        self.requested_early_exit = False
        self.losses = []
        self.smoothed_loss = 0.0
        self.net = train_net or self._build_train_net()
        self.test_nets = self._build_test_nets()
        xp = self.net.xp
        n = self.net.flat_data.size
        self.history = [xp.zeros(n, self.dtype) for _ in range(n_history)]
        self._blocks = _update_blocks(self.net.learnable, self.dtype.type)
        self._scratch = []                 # a block-sized buffer per thread the update runs on
        self._lane_runs = {}               # thread count -> the blocks each thread updates
        self._update_choice = threads.Choice()   # its threads at once or one after another, as measured
        self._mults = None                 # per-element lr/decay multipliers, built for the GPU kernels only
        self.iteration_timer = time.time()
        self.last_test_scores = []

    # -- nets ----------------------------------------------------------------------
    def _net_from(self, param_field, file_field, phase, state, index=None):
        if file_field is not None:
            path = _resolve(file_field, self.base_dir)
            net_param, source = proto_io.read_net(path)
        else:
            net_param, source = param_field, None
        net_param = caffe_pb2.NetParameter.FromString(net_param.SerializeToString())
        if state is not None:
            net_param.state.CopyFrom(state)
        net_param.state.phase = phase
        stages = list(net_param.state.stage)
        return Net(net_param, phase, net_param.state.level, stages, dtype=self.dtype, source=source)

    def _build_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise SolverError("%s: give exactly one of net, net_param, train_net, train_net_param (got %s)"
                              % (self.path, ", ".join(given) or "none"))
        state = p.train_state if p.HasField("train_state") else None
        field = given[0]
        if field in ("net", "train_net"):
            net = self._net_from(None, getattr(p, field), TRAIN, state)
        else:
            net = self._net_from(getattr(p, field), None, TRAIN, state)
        if p.weights:
            for w in p.weights:
                net.copy_from(_resolve(w, self.base_dir))
        return net

    def _build_test_nets(self):
        p = self.param
        specs = [(None, f) for f in p.test_net] + [(np_, None) for np_ in p.test_net_param]
        general = p.HasField("net") or p.HasField("net_param")
        if general:
            extra = len(p.test_iter) - len(specs)
            for _ in range(max(extra, 0)):
                specs.append((p.net_param, None) if p.HasField("net_param") else (None, p.net))
        if len(p.test_iter) != len(specs):
            raise SolverError("%s: %d test_iter values for %d test nets" % (self.path, len(p.test_iter), len(specs)))
        if len(p.test_state) not in (0, len(specs)):
            raise SolverError("%s: %d test_state values for %d test nets" % (self.path, len(p.test_state), len(specs)))
        if specs and p.test_interval <= 0 and p.HasField("test_interval"):
            raise SolverError("%s: test_interval must be positive" % self.path)
        nets = []
        for i, (net_param, net_file) in enumerate(specs):
            state = p.test_state[i] if len(p.test_state) else None
            net = self._net_from(net_param, net_file, TEST, state)
            net.share_weights_with(self.net)
            nets.append(net)
        return nets

    # -- the loop ------------------------------------------------------------------
    def add_callback(self, callback):
        self.callbacks.append(callback)

    def step(self, iters):
        """Run `iters` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        average = max(p.average_loss, 1)
        self.losses, self.smoothed_loss = [], 0.0
        self.iteration_timer = time.time()
        timer_iter = self.iter
        while self.iter < stop_iter:
            # lazily: InnerProduct layers write their weight gradients whole
            # (callbacks may read diffs before backward: then eagerly)
            self.net.clear_param_diffs(lazily=not self.callbacks)
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization) and self.is_root):
                self.test_all()
                if self.requested_early_exit:
                    break
            for cb in self.callbacks:
                cb.on_start(self)
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for _ in range(max(p.iter_size, 1)):
                loss += self.net.forward_backward()
            loss /= max(p.iter_size, 1)
            if not (math.isfinite(loss) and numerics.gradients_finite(self.net)):
                if self._numerical_fault(loss):
                    continue
            self._update_smoothed_loss(loss, start_iter, average)
            if display and self.is_root:
                timer_iter = self._display(timer_iter)
            for cb in self.callbacks:
                cb.on_gradients_ready(self)
            self.apply_update()
            self.iter += 1
            request = self.action_request() if self.action_request else None
            if (p.snapshot and self.iter % p.snapshot == 0 and self.is_root) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    is_root = property(lambda self: backend.solver_rank() == 0)

    def _numerical_fault(self, loss):
        """Stop (the default) or skip the step, as SolverParameter.nan_policy says."""
        message = numerics.describe(self.net, self.iter, loss)
        if self.param.nan_policy == "skip":
            log.warning("Skipping the update: %s", message)
            self.skipped_steps = getattr(self, "skipped_steps", 0) + 1
            self.iter += 1
            return True
        if self.param.nan_policy != "stop":
            raise SolverError("%s: nan_policy must be 'stop' or 'skip', not %r" % (self.path, self.param.nan_policy))
        raise numerics.NumericalError(message + "; stopping (the last snapshot is kept; "
                                      "set nan_policy: \"skip\" to skip such steps)")

    def _update_smoothed_loss(self, loss, start_iter, average):
        if len(self.losses) < average:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average
            self.smoothed_loss += (loss - self.losses[idx]) / average
            self.losses[idx] = loss

    def _display(self, timer_iter):
        now = time.time()
        elapsed = now - self.iteration_timer
        done = self.iter - timer_iter
        speed = done / elapsed if elapsed > 0 and done else 0.0
        log.info("Iteration %d (%g iter/s, %.3fs/%d iters), loss = %g",
                 self.iter, speed, elapsed, self.param.display, self.smoothed_loss)
        self.iteration_timer = now
        self._log_data_wait(elapsed)
        self._log_outputs(self.net, "Train", {n: self.net.blobs[n].data for n in self.net.outputs})
        return self.iter

    def _log_data_wait(self, elapsed):
        """How much of the last display interval the solver spent waiting for prefetched batches."""
        waited = self.net.data_wait_seconds()
        if waited is None:
            return
        delta, self._data_wait_mark = waited - getattr(self, "_data_wait_mark", 0.0), waited
        if elapsed > 0:
            log.info("    Waited for data %.3fs (%.1f%% of the time since the last display)",
                     delta, 100.0 * delta / elapsed)
        skipped = self.net.data_skipped_records() or 0
        new, self._skipped_mark = skipped - getattr(self, "_skipped_mark", 0), skipped
        if new:
            log.warning("    Skipped %d bad records since the last display (%d in all; bad_record: SKIP)",
                        new, skipped)

    def _log_outputs(self, net, kind, values):
        k = 0
        for name in net.outputs:
            data = backend.to_host(values[name]).reshape(-1)
            weight = net.blob_loss_weights.get(name, 0.0)
            for v in data:
                extra = " (* %g = %g loss)" % (weight, weight * v) if weight else ""
                log.info("    %s net output #%d: %s = %g%s", kind, k, name, v, extra)
                k += 1

    def solve(self, resume=None):
        """Train to max_iter, optionally resuming from a .solverstate."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy or "fixed")
        if resume:
            self.restore(resume)
        self.requested_early_exit = False
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) and self.is_root:
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0 and self.is_root:
            loss = self.net.forward()
            log.info("Iteration %d, loss = %g", self.iter, loss)
        if p.test_interval and self.iter % p.test_interval == 0 and self.is_root:
            self.test_all()
        log.info("Optimization Done.")

    def close(self):
        """Stop the data pipelines of the train and test nets (their threads and processes)."""
        for net in [self.net] + list(self.test_nets):
            net.close()

    def test_all(self):
        self.last_test_scores = [self.test(i) for i in range(len(self.test_nets))]
        return self.last_test_scores

    def test(self, index=0):
        """Run test net `index` for its test_iter batches; return {output name: mean value}."""
        net = self.test_nets[index]
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        sums, loss = {}, 0.0
        iters = self.param.test_iter[index]
        for _ in range(iters):
            loss += net.forward()
            for name in net.outputs:
                value = backend.to_host(net.blobs[name].data).astype(numpy.float64).copy()
                sums[name] = sums[name] + value if name in sums else value
        if self.param.test_compute_loss:
            log.info("Test loss: %g", loss / iters)
        means = {name: s / iters for name, s in sums.items()}
        self._log_outputs(net, "Test", means)
        return {name: (float(v) if v.size == 1 else v) for name, v in means.items()}

    # -- the update ------------------------------------------------------------------
    def learning_rate(self):
        return lr_policy.learning_rate(self.param, self.iter, self.lr_state)

    def apply_update(self):
        """Clip, normalize, regularize, compute the update value, and step the weights."""
        p = self.param
        xp = self.net.xp
        rate = self.learning_rate()
        if p.display and self.iter % p.display == 0 and self.is_root:
            log.info("Iteration %d, lr = %g", self.iter, rate)
        g, w = self.net.flat_diff, self.net.flat_data
        if p.clip_gradients >= 0:
            norm = float(xp.sqrt(xp.dot(g, g)))
            if norm > p.clip_gradients:
                scale = p.clip_gradients / norm
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                         norm, p.clip_gradients, scale)
                g *= scale
        if kernels.on_gpu(g) and p.regularization_type in ("L1", "L2"):
            # CuPy: decay, update value and step fused in one kernel per type (ops/kernels.py)
            kernels.solver_update(self, rate)
            return
        if p.weight_decay and p.regularization_type not in ("L1", "L2"):
            raise SolverError("%s: unknown regularization_type %r (use L2 or L1)"
                              % (self.path, p.regularization_type))
        # Block by block, so that a block's gradient, weights, history and
        # scratch stay in cache through the dozen elementwise passes of the
        # update; each block's multipliers are scalars. Elementwise, so the
        # bits are those of whole-buffer passes at any block or thread count.
        dt = self.dtype.type
        scale = dt(1.0 / p.iter_size) if p.iter_size > 1 else None
        decay, rate = dt(p.weight_decay), dt(rate)
        l1 = p.regularization_type == "L1"

        def update(blocks, tmp):
            for start, stop, lr_mult, decay_mult in blocks:
                gb, wb, tb = g[start:stop], w[start:stop], tmp[:stop - start]
                if scale is not None:
                    gb *= scale
                if p.weight_decay:
                    if l1:
                        xp.sign(wb, out=tb)
                        tb *= decay_mult * decay
                    else:
                        xp.multiply(wb, decay_mult * decay, out=tb)
                    gb += tb
                self.rule(xp, p, gb, lr_mult * rate, [h[start:stop] for h in self.history], tb, self.iter)
                wb -= gb

        lanes = threads.count(xp)
        runs = self._lane_runs.get(lanes)
        if runs is None:
            runs = self._lane_runs[lanes] = lane_blocks(self._blocks, lanes)
        if len(self._scratch) != len(runs):
            self._scratch = [xp.empty(_BLOCK, self.dtype) for _ in runs]
        threads.run([functools.partial(update, run, tmp) for run, tmp in zip(runs, self._scratch)], self._update_choice)

    def per_element_mults(self):
        """(lr_mult, decay_mult) as flat per-element arrays (the GPU update kernels read them)."""
        if self._mults is None:
            xp = self.net.xp
            n = self.net.flat_data.size
            self._mults = (xp.zeros(n, self.dtype), xp.zeros(n, self.dtype))
            for start, stop, lr_mult, decay_mult in self._blocks:
                self._mults[0][start:stop] = lr_mult
                self._mults[1][start:stop] = decay_mult
        return self._mults

    # -- snapshots -------------------------------------------------------------------
    def snapshot_filename(self, extension):
        prefix = self.param.snapshot_prefix or os.path.splitext(self.path)[0]
        return "%s_iter_%d%s" % (prefix, self.iter, extension)

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate (each atomically);
        with snapshot_format HDF5, .caffemodel.h5 and .solverstate.h5."""
        from .state import save_state
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        kind, suffix = ("HDF5", ".h5") if hdf5 else ("binary proto", "")
        model = self.snapshot_filename(".caffemodel" + suffix)
        log.info("Snapshotting to %s file %s", kind, model)
        if hdf5:
            from .. import weights_hdf5
            weights_hdf5.save(self.net, model, self.param.snapshot_diff)
        else:
            proto_io.write_binary(model, self.net.to_proto(self.param.snapshot_diff))
        state = self.snapshot_filename(".solverstate" + suffix)
        log.info("Snapshotting solver state to %s file %s", kind, state)
        save_state(self, state, model)
        return model, state

    def restore(self, path):
        """Continue from a .solverstate or .solverstate.h5 (and the weights it names)."""
        from .state import load_state
        load_state(self, path)
