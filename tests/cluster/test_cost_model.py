"""The communication cost model: REFERENCES.md's formulas, FireCaffe's comparison, and `pycaffe-dist simulate`."""
import math

import pytest

from pycaffe_dist.cli import main
from pycaffe_dist.parallel import cost_model as cm

NET = cm.Network(alpha=2e-6, beta=1e-9, gamma=0.0)


@pytest.mark.parametrize("p", [2, 4, 8, 64])
def test_allreduce_costs_are_the_alpha_beta_formulas(p):
    n, a, b = 4e6, NET.alpha, NET.beta
    assert cm.allreduce_seconds("ps", n, p, NET) == pytest.approx(2 * p * (a + n * b))
    assert cm.allreduce_seconds("binomial", n, p, NET) == pytest.approx(2 * math.log2(p) * (a + n * b))
    assert cm.allreduce_seconds("ring", n, p, NET) == pytest.approx(2 * (p - 1) * a + 2 * (p - 1) / p * n * b)
    assert cm.allreduce_seconds("halving_doubling", n, p, NET) == pytest.approx(
        2 * math.log2(p) * a + 2 * (p - 1) / p * n * b)


def test_ranks_beyond_the_cores_share_them():
    """More ranks than cores: each step waits alpha_shared, and a phase costs all its ranks' CPU work over the cores."""
    n, cores = 4e6, 2
    a, b, g, b1, a_s, b_s, g_s = 2e-6, 1e-10, 5e-11, 2e-10, 3e-4, 4e-10, 2e-10
    net = cm.Network(alpha=a, beta=b, gamma=g, beta_oneway=b1, cores=cores,
                     alpha_shared=a_s, beta_shared=b_s, gamma_shared=g_s)
    # ring, 4 ranks: 6 steps; all 4 ranks send 6 n bytes and sum 3 n along the ring, at the shared rates.
    assert cm.allreduce_seconds("ring", n, 4, net) == pytest.approx(6 * a_s + (6 * n * b_s + 3 * n * g_s) / cores)
    # binomial tree, 4 ranks: 4 steps; the p - 1 edges carry the buffer up and down, 3 n summed.
    assert cm.allreduce_seconds("binomial", n, 4, net) == pytest.approx(4 * a_s + (6 * n * b_s + 3 * n * g_s) / cores)
    # halving-doubling, 4 ranks: pairs of partners run at the one-rank-per-core rates, the cores shared.
    assert cm.allreduce_seconds("halving_doubling", n, 4, net) == pytest.approx(
        4 * a_s + (6 * n * b + 3 * n * g) / cores)
    # 3 ranks: the fold and the 2-rank halving-doubling each have a core per working rank.
    assert cm.allreduce_seconds("halving_doubling", n, 3, net) == pytest.approx(
        2 * a + 2 * n * b1 + n * g + 2 * a + n * b + n / 2 * g)
    # 6 ranks: 4 fold into 2 (4 at work on 2 cores; here a pair's one-way path is the longer), then 4 run
    # halving-doubling on 2 cores.
    assert (4 * n * b + 2 * n * g) / cores < 2 * n * b1 + n * g
    assert cm.allreduce_seconds("halving_doubling", n, 6, net) == pytest.approx(
        2 * a_s + 2 * n * b1 + n * g + 4 * a_s + (6 * n * b + 3 * n * g) / cores)
    # The longest path bounds a phase from below: with free CPU work the one-rank-per-core time remains.
    free = cm.Network(alpha=a, beta=b, gamma=g, cores=cores, alpha_shared=a_s, beta_shared=0.0, gamma_shared=0.0)
    assert cm.allreduce_seconds("ring", n, 4, free) == pytest.approx(6 * a_s + 1.5 * n * b + 0.75 * n * g)
    # With one rank per core the shared figures play no part.
    for name in ("binomial", "ring", "halving_doubling"):
        assert cm.allreduce_seconds(name, n, 2, net) == pytest.approx(
            cm.allreduce_seconds(name, n, 2, cm.Network(alpha=a, beta=b, gamma=g, beta_oneway=b1)))


def test_bandwidth_optimal_algorithms_win_on_large_buffers_and_trees_on_latency():
    big, small = 100e6, 64
    assert cm.allreduce_seconds("ring", big, 64, NET) < cm.allreduce_seconds("binomial", big, 64, NET)
    assert cm.allreduce_seconds("binomial", small, 64, NET) < cm.allreduce_seconds("ring", small, 64, NET)
    # p not a power of two: halving-doubling pays one fold and unfold of the whole buffer.
    assert cm.allreduce_seconds("halving_doubling", big, 3, NET) > cm.allreduce_seconds("halving_doubling", big, 2, NET)


def test_firecaffe_the_tree_beats_the_server_and_googlenet_lands_near_47x_on_128():
    params, bw = cm.GOOGLENET.params, 56e9
    assert cm.firecaffe_seconds("ps", params, 128, bw) == pytest.approx(32 * params * 128 / bw)
    assert cm.firecaffe_seconds("tree", params, 128, bw) == pytest.approx(2 * 32 * params * 7 / bw)
    tree = cm.strong_speedup(cm.GOOGLENET, 128, cm.FIRECAFFE_NETWORK, "tree")
    server = cm.strong_speedup(cm.GOOGLENET, 128, cm.FIRECAFFE_NETWORK, "ps")
    assert tree == pytest.approx(47, rel=0.1) and server < tree / 4
    # FireCaffe's formulas: the server's time over the tree's is p / (2 log2 p): even at 2 and 4
    # workers, ahead from 8 on, and the gap grows with p.
    for p in (2, 4, 8, 32, 128, 1024):
        assert cm.firecaffe_seconds("ps", params, p, bw) / cm.firecaffe_seconds("tree", params, p, bw) == \
            pytest.approx(p / (2 * math.log2(p)))
        tree, server = (cm.strong_speedup(cm.GOOGLENET, p, cm.FIRECAFFE_NETWORK, k) for k in ("tree", "ps"))
        assert tree > server if p >= 8 else tree == pytest.approx(server)


def test_strategies_rank_as_their_traffic_says():
    work = cm.Workload(params=25_000_000, compute_s=0.25)
    net = cm.Network.from_bandwidth(10)
    at = {name: cm.speedup(work, 64, net, **kw) for name, kw in [
        ("ring", dict(strategy="sync", algorithm="ring")), ("ps", dict(strategy="ps")),
        ("ps8", dict(strategy="ps", servers=8)), ("easgd", dict(strategy="easgd", tau=10)),
        ("onebit", dict(strategy="sync", compression="onebit", overlap=False)),
        ("plain", dict(strategy="sync", algorithm="ring", overlap=False))]}
    assert at["ps"] < at["ps8"] < at["ring"] <= 64
    assert at["easgd"] > at["plain"]
    # 1-bit payloads are allgathered, not summed on the way: (p-1)/32 of the buffer per rank,
    # a clear win on 8 workers that is gone by 64.
    onebit, plain = (cm.speedup(work, 8, net, strategy="sync", compression=c, overlap=False)
                     for c in ("onebit", "none"))
    assert onebit > 1.3 * plain
    assert at["onebit"] == pytest.approx(at["plain"], rel=0.05)


def test_simulate_prints_every_strategy_and_writes_a_plot(tmp_path, capsys):
    plot = tmp_path / "speedup.png"
    assert main(["simulate", "--params", "431080", "--compute_ms", "20", "--workers", "64",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for label in ("sync ring", "sync binomial tree", "ps, 1 server", "downpour", "easgd", "ssp", "sync 1-bit"):
        assert label in out
    assert plot.stat().st_size > 1000
    assert main(["simulate", "--firecaffe"]) == 0
    assert "47.4x" in capsys.readouterr().out
