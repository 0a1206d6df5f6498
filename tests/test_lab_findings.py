"""lab.seeds, lab.Spread and the bundled-base switch: the conventions every chapter's training results follow."""

import pytest

from minilora import lab


def test_default_seeds_are_several_distinct_integers(monkeypatch):
    monkeypatch.delenv("MINILORA_SEEDS", raising=False)
    seeds = lab.seeds()
    assert len(seeds) >= 3 and len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) for s in seeds)


def test_environment_replaces_the_seeds(monkeypatch):
    monkeypatch.setenv("MINILORA_SEEDS", "100, 101,102")
    assert lab.seeds() == (100, 101, 102)
    monkeypatch.setenv("MINILORA_SEEDS", "7")
    assert lab.seeds() == (7,)


@pytest.mark.parametrize("value", ["1,two,3", "1;2", "1,,2", "1,1"])
def test_bad_seed_lists_name_the_variable(monkeypatch, value):
    monkeypatch.setenv("MINILORA_SEEDS", value)
    with pytest.raises(ValueError, match="MINILORA_SEEDS"):
        lab.seeds()


def test_spread_reports_median_and_range():
    spread = lab.Spread([0.71, 0.64, 0.69])
    assert spread.median == pytest.approx(0.69)
    assert (spread.low, spread.high, spread.n) == (pytest.approx(0.64), pytest.approx(0.71), 3)
    assert str(spread) == "0.69 (0.64 to 0.71, 3 seeds)"
    assert spread.format(".0%") == "69% (64% to 71%, 3 seeds)"
    assert lab.Spread([2.0]).format(".1f") == "2.0 (1 seed)"
    with pytest.raises(ValueError):
        lab.Spread([])


def test_bundled_base_follows_minilora_base(monkeypatch, capsys):
    monkeypatch.delenv("MINILORA_BASE", raising=False)
    assert lab.bundled_base() and lab.claim_for_bundled_base("anything")
    monkeypatch.setenv("MINILORA_BASE", str(lab.BASE_MODEL_DIR))
    assert lab.bundled_base()
    monkeypatch.setenv("MINILORA_BASE", "gpt2")
    assert not lab.bundled_base()
    assert not lab.claim_for_bundled_base("the base model scores 0%")
    assert "Skipped" in capsys.readouterr().out


def test_plot_spread_and_loss_band_draw_every_seed():
    import matplotlib

    matplotlib.use("Agg")
    from minilora.lab import plots

    ax = plots.plot_spread([1, 2, 4], {"fixed alpha": [[0.1, 0.2], [0.3, 0.5], [0.6, 0.7]]}, logx=True)
    assert sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")) >= 6
    ax = plots.plot_loss_band({"r=8": [[3.0, 2.0, 1.0], [3.5, 2.5, 1.5]]})
    assert list(ax.lines[0].get_ydata()) == [3.25, 2.25, 1.25]
    with pytest.raises(ValueError, match="entries"):
        plots.plot_spread([1, 2], {"x": [[0.1]]})
