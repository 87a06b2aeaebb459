"""svdtool's WeightWatcher columns against WeightWatcher 0.7.7 itself, on the packaged all-MiniLM-L6-v2.

WW reads the same safetensors folder (its own loader, scipy float64 SVD, default ``analyze()``); every
matrix it analyses must agree: α to 1e-6 relative (the issue asks for a median |Δα| ≤ 0.01; the fits
are the same algorithm on σ that agree to ~1e-12, so they agree to rounding), the other columns too.
WW skips ``embeddings.token_type_embeddings`` (2 × 384: fewer than its min_evals = 8 eigenvalues).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
from tests.helpers import assert_close

pytestmark = pytest.mark.real

COLUMNS = ("alpha", "xmin", "D", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "entropy")


def test_minilm_matches_weightwatcher(minilm_dir: Path) -> None:
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = weightwatcher.WeightWatcher(model=str(minilm_dir)).analyze(plot=False)
    ww = {row["name"]: row for _, row in details.iterrows()}
    ours = {m.name.removesuffix(".weight"): m for m in run_spectrum(SpectrumRequest(str(minilm_dir))).result.matrices}
    assert set(ours) - set(ww) == {"embeddings.token_type_embeddings"}
    assert len(ww) == 39 and set(ww) <= set(ours)
    delta = []
    for name, row in ww.items():
        m = ours[name].ww
        assert m is not None and m.status == row["status"] == "success", name
        delta.append(abs(m.alpha - row["alpha"]))
        assert_close([getattr(m, c) for c in COLUMNS], [row[c] for c in COLUMNS], "ww", name)
        assert (m.num_pl_spikes, m.rank_loss) == (row["num_pl_spikes"], row["rank_loss"]), name
        assert m.warning == (row["warning"] or ""), name
    assert float(np.median(delta)) <= 0.01 and max(delta) <= 0.1
    # The warnings are exercised: MiniLM has over- and under-trained layers by WW's thresholds.
    assert {ours[n].ww.warning for n in ww} == {"", "over-trained", "under-trained"}  # type: ignore[union-attr]
