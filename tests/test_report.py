"""HTML reports: sections, table numbers against the JSON, no external references, determinism, CLI, samples."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from svdtool.cli import main
from svdtool.commands.report import load_results, make_report
from svdtool.report import render
from svdtool.report.tables import FORMATS, fmt

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_reports"
GENERATED = "2026-01-02T03:04:05+00:00"
RANKS = [2, 4, 8]
RESULT_FILES = {"spectrum": "spectrum.json", "coverage": "coverage.json", "init": "svdtool.json"}


# ---------------------------------------------------------------- a small HTML model, built with the stdlib parser


class Doc(HTMLParser):
    """Every start tag with its attributes, plus tables, texts by tag and the contents of <style>/<script>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: list[dict[str, Any]] = []
        self.texts: dict[str, list[str]] = {}
        self.styles: list[str] = []
        self.scripts: list[str] = []
        self.by_id: dict[str, tuple[str, dict[str, str]]] = {}
        self.id_texts: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of elements whose text we collect
        self._buf: dict[int, list[str]] = {}
        self._table: dict[str, Any] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._raw: str | None = None
        self._in_head = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if "id" in a:
            assert a["id"] not in self.by_id, f"duplicate id {a['id']!r}"
            self.by_id[a["id"]] = (tag, a)
        if tag in ("style", "script"):
            self._raw = tag
        if tag in ("title", "desc", "h1", "h2", "figcaption", "dd", "dt", "p", "code", "time", "summary"):
            self._open.append((tag, a.get("id")))
            self._buf[len(self._open)] = []
        if tag == "table" and "data-source" in a:
            self._table = {"attrs": a, "columns": [], "rows": []}
            self.tables.append(self._table)
        elif self._table is not None:
            if tag == "thead":
                self._in_head = True
            elif tag == "tr":
                self._row = []
                if "data-key" in a:
                    self._table["rows"].append((a["data-key"], self._row))
            elif tag in ("th", "td"):
                self._cell = []
                if self._in_head:
                    self._table["columns"].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._raw = None
        if self._open and self._open[-1][0] == tag:
            name, ident = self._open.pop()
            text = " ".join("".join(self._buf.pop(len(self._open) + 1)).split())
            self.texts.setdefault(name, []).append(text)
            if ident:
                self.id_texts[ident] = text
        if self._table is not None:
            if tag == "thead":
                self._in_head = False
            elif tag in ("th", "td") and self._cell is not None and self._row is not None:
                self._row.append("".join(self._cell).strip())
                self._cell = None
            elif tag == "table":
                self._table = None

    def handle_data(self, data: str) -> None:
        if self._raw == "style":
            self.styles.append(data)
        elif self._raw == "script":
            self.scripts.append(data)
        for i in range(1, len(self._open) + 1):
            self._buf[i].append(data)
        if self._cell is not None:
            self._cell.append(data)


# ---------------------------------------------------------------- checks shared by the tiny report and the samples


def _json_dig(data: Any, path: str) -> Any:
    """Follow a dotted path through JSON; a dict key may itself contain dots ("rank_for_energy.0.5")."""
    rest = path
    while rest:
        if isinstance(data, dict) and rest in data:
            return data[rest]
        part, _, rest = rest.partition(".")
        data = data[part] if isinstance(data, dict) else data[int(part)]
    return data


# How far a shown number may be from the stored one, given its format: half a unit of the last digit.
_SLACK = {
    "sigma": lambda v: 5e-4 * abs(v),
    "fraction": lambda v: 5e-5,
    "rank": lambda v: 5e-2,
    "int": lambda v: 0.0,
    "error": lambda v: 5e-3 * abs(v),
    "seconds": lambda v: 5e-4,
}


def check_tables(doc: Doc, results: dict[str, Any]) -> int:
    """Every numeric cell of every data table equals its JSON value; returns the number of cells checked."""
    assert set(_SLACK) == set(FORMATS)
    checked = 0
    for table in doc.tables:
        kind, _, path = table["attrs"]["data-source"].partition(".")
        records = _json_dig(results[kind], path)
        key_field = table["attrs"]["data-key-field"]
        by_key = {str(r[key_field]): r for r in records}
        assert len(by_key) == len(records)
        assert sorted(k for k, _ in table["rows"]) == sorted(by_key), table["attrs"]["id"]
        columns = table["columns"]
        for key, cells in table["rows"]:
            assert len(cells) == len(columns)
            for col, shown in zip(columns, cells, strict=True):
                if "data-field" not in col:
                    continue
                value, kind_ = _json_dig(by_key[key], col["data-field"]), col["data-format"]
                where = f"{table['attrs']['id']} {key} {col['data-field']}"
                assert shown == fmt(value, kind_), where
                number = float(value) if isinstance(value, str) else value  # "inf"/"nan" are strings in JSON
                if number is None or not math.isfinite(number):
                    assert shown in ("—", "∞", "−∞", "nan"), where
                else:
                    slack = _SLACK[kind_](number) * (1 + 1e-9) + 1e-12
                    parsed = float(shown.replace(",", "").rstrip("%")) / (100 if shown.endswith("%") else 1)
                    assert abs(parsed - number) <= slack, where
                checked += 1
    return checked


_URL_ATTRS = {"src", "href", "xlink:href", "srcset", "poster", "action", "formaction", "data", "background", "ping"}
_FORBIDDEN_TAGS = {"link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source", "track", "form"}


def check_self_contained(text: str) -> None:
    """No reference that would make the browser fetch anything: only #fragments and data: URIs."""
    doc = Doc(text)
    for tag, attrs in doc.tags:
        assert tag not in _FORBIDDEN_TAGS, tag
        for name, value in attrs.items():
            if name in _URL_ATTRS:
                assert value.startswith(("#", "data:")), f"<{tag} {name}={value[:60]!r}>"
            assert not name.startswith("on"), f"inline event handler <{tag} {name}>"
            if name == "style":
                for ref in re.findall(r"url\(\s*['\"]?([^)'\"]*)", value):
                    assert ref.startswith(("#", "data:")), (tag, ref)
    css = "".join(doc.styles)
    assert "@import" not in css
    for ref in re.findall(r"url\(\s*['\"]?([^)'\"]*)", css):
        assert ref.startswith(("#", "data:")), ref
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), "an absolute URL appears in the file"
    # The Content-Security-Policy lets the browser load nothing but inline data, and only our script.
    csp = next(a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp
    script = "".join(doc.scripts).strip()
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def check_accessible(doc: Doc) -> None:
    html_tag = next(a for t, a in doc.tags if t == "html")
    assert html_tag.get("lang") == "en"
    svgs = [a for t, a in doc.tags if t == "svg"]
    imgs = [a for t, a in doc.tags if t == "img"]
    assert svgs or imgs
    for a in svgs:
        assert a.get("role") == "img"
        title_id, desc_id = a["aria-labelledby"].split()
        assert doc.by_id[title_id][0] == "title" and doc.id_texts[title_id]
        assert doc.by_id[desc_id][0] == "desc" and len(doc.id_texts[desc_id]) > 40
    for a in imgs:
        assert len(a.get("alt", "")) > 40
    assert len(doc.texts["figcaption"]) == len(svgs) + len(imgs)


def _load_json(folder: Path) -> dict[str, Any]:
    return {k: json.loads((folder / f).read_text()) for k, f in RESULT_FILES.items() if (folder / f).is_file()}


def _without_timestamp(text: str) -> str:
    return re.sub(r'<time id="generated" datetime="[^"]*">[^<]*</time>', "<time/>", text)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spectrum_dir(tiny_spectrum_dir: Path) -> Path:
    return tiny_spectrum_dir


@pytest.fixture(scope="module")
def report_text(spectrum_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = make_report([spectrum_dir], tmp_path_factory.mktemp("html") / "report.html", GENERATED)
    return path.read_text()


# ---------------------------------------------------------------- the spectrum report


def test_sections_and_header(report_text: str, spectrum_dir: Path) -> None:
    data = json.loads((spectrum_dir / "spectrum.json").read_text())
    doc = Doc(report_text)
    assert doc.texts["h2"] == [
        "The claim",
        "Rank coverage",
        "Cumulative energy",
        "σ₁, stable rank and effective rank per layer",
        "Heavy tails, MP bulk and SNR",
    ]
    for section in ("claim", "rank-coverage", "energy", "per-layer", "analytics"):
        assert doc.by_id[section][0] == "section"
    facts = dict(zip(doc.texts["dt"], doc.texts["dd"], strict=True))
    m = data["manifest"]
    assert facts["model"] == m["model"]
    n = len(data["matrices"])
    assert facts["dtype"] == f"fp32 ({n} matrices)"
    params = sum(math.prod(x["shape"]) for x in data["matrices"])
    assert facts["parameters"].startswith(f"{params:,} in {n} matrices")
    assert "svdtool spectrum tiny --ranks 2,4,8" in doc.texts["code"]
    assert m["started"] in doc.texts["time"] and GENERATED in doc.texts["time"]
    assert m["tool_version"] in report_text
    assert data["claim"]["verdict"] in doc.texts["p"]
    label = "The claim holds" if data["claim"]["holds_with_embeddings"] else "The claim does NOT hold"
    assert any(t.endswith(label) for t in doc.texts["p"])


def test_figures(report_text: str, spectrum_dir: Path) -> None:
    data = json.loads((spectrum_dir / "spectrum.json").read_text())
    types = {m["module_type"] for m in data["matrices"]}
    doc = Doc(report_text)
    figures = [a["id"] for t, a in doc.tags if t == "figure"]
    assert len([f for f in figures if f.startswith("fig-hist-")]) == 1 + len(types)
    assert [f for f in figures if f.startswith("fig-heat-")] == [f"fig-heat-{r}" for r in RANKS]
    assert len([f for f in figures if f.startswith("fig-energy-")]) == 1 + len(types)
    assert len([f for f in figures if f.startswith("fig-layer-")]) == 4  # σ₁, stable rank, effective rank, α
    assert len([f for f in figures if f.startswith("fig-esd-")]) == len(types)  # one ESD fit per module type
    layered = {m["module_type"] for m in data["matrices"] if m["layer"] is not None}
    assert len([f for f in figures if f.startswith("fig-snr-")]) == len(layered)
    check_accessible(doc)
    # Each heatmap prints every cell's percentage, so no value is carried by colour alone.
    heat = report_text[report_text.index('id="fig-heat-2"') :]
    heat = heat[: heat.index("</figure>")]
    for m in data["matrices"]:
        if m["layer"] is not None:
            assert f">{100 * m['energy_at_rank']['2']:.0f}</text>" in heat


def test_table_numbers_equal_json(report_text: str, spectrum_dir: Path) -> None:
    doc = Doc(report_text)
    ids = {t["attrs"]["id"] for t in doc.tables}
    tables = ("claim-fractions", "by-module-type", "matrix-energy", "by-layer", "matrix-metrics", "matrix-analytics")
    assert set(tables) <= ids
    n = check_tables(doc, _load_json(spectrum_dir))
    assert n >= 16 * (len(RANKS) + 3 + 10)


def test_table_check_catches_a_wrong_number(report_text: str, spectrum_dir: Path) -> None:
    results = _load_json(spectrum_dir)
    results["spectrum"]["matrices"][0]["stable_rank"] += 0.5
    with pytest.raises(AssertionError):
        check_tables(Doc(report_text), results)


def test_self_contained(report_text: str) -> None:
    check_self_contained(report_text)
    assert not re.search(r"https?:|ftp:|file:", report_text, re.I)


def test_self_contained_check_catches_external_references(report_text: str) -> None:
    bad = [
        report_text.replace("</head>", '<link rel="stylesheet" href="https://example.com/x.css"></head>'),
        report_text.replace("</main>", '<img src="https://example.com/x.png" alt="x"></main>'),
        report_text.replace("</style>", "body { background: url(https://example.com/bg.png); }</style>"),
        report_text.replace("</main>", '<svg><image href="//example.com/a.png"/></svg></main>'),
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            check_self_contained(text)


def test_deterministic(spectrum_dir: Path) -> None:
    a = render(load_results([spectrum_dir]), generated=GENERATED)
    b = render(load_results([spectrum_dir]), generated=GENERATED)
    c = render(load_results([spectrum_dir]), generated="2030-12-31T23:59:59+00:00")
    assert a == b
    assert a != c and _without_timestamp(a) == _without_timestamp(c)


def test_png_fallback(spectrum_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures whose SVG would be too large become PNG data URIs, still deterministic, described and inline."""
    import svdtool.report.figures as figures

    monkeypatch.setattr(figures, "SVG_LIMIT", 0)
    text = render(load_results([spectrum_dir]), generated=GENERATED)
    doc = Doc(text)
    imgs = [a for t, a in doc.tags if t == "img"]
    assert imgs and not [a for t, a in doc.tags if t == "svg"]
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    png = base64.b64decode(imgs[0]["src"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG") and b"Software" not in png
    check_accessible(doc)
    check_self_contained(text)
    assert render(load_results([spectrum_dir]), generated=GENERATED) == text


def test_without_sidecar(spectrum_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-sidecar"
    folder.mkdir()
    shutil.copy(spectrum_dir / "spectrum.json", folder)
    text = make_report([folder], tmp_path / "r.html", GENERATED).read_text()
    doc = Doc(text)
    assert "fig-hist-0" not in doc.by_id and "energy" not in doc.by_id
    assert "fig-heat-2" in doc.by_id
    assert any("spectra.safetensors" in p for p in doc.texts["p"])
    check_tables(doc, _load_json(folder))


def test_sidecar_of_another_result_is_refused(spectrum_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(spectrum_dir / "spectrum.json", folder)
    import numpy as np

    save_file({"some.other.weight": np.ones(3)}, str(folder / "spectra.safetensors"))
    with pytest.raises(SystemExit) as exc:
        main(["report", str(folder), "-o", str(tmp_path / "r.html")])
    assert exc.value.code == 2


# ---------------------------------------------------------------- command line


def test_cli_report(spectrum_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "report.html"
    main(["report", str(spectrum_dir), "-o", str(out)])
    assert f"wrote {out}" in capsys.readouterr().err
    doc = Doc(out.read_text())
    assert "claim" in doc.by_id
    # A result file may be named instead of its folder.
    main(["report", str(spectrum_dir / "spectrum.json"), "-o", str(tmp_path / "r2.html")])
    assert _without_timestamp((tmp_path / "r2.html").read_text()) == _without_timestamp(out.read_text())


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "twice", "output-is-folder", "not-json", "not-a-result", "unknown-file"],
)
def test_cli_report_errors(case: str, spectrum_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    args = [str(spectrum_dir)]
    if case == "missing":
        args = [str(tmp_path / "nope")]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty")]
    elif case == "twice":
        args = [str(spectrum_dir), str(spectrum_dir / "spectrum.json")]
    elif case == "output-is-folder":
        out = tmp_path
    elif case == "not-json":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "spectrum.json").write_text("{not json")
        args = [str(tmp_path / "bad")]
    elif case == "not-a-result":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "spectrum.json").write_text('{"matrices": 3}')
        args = [str(tmp_path / "bad")]
    elif case == "unknown-file":
        (tmp_path / "x.json").write_text("{}")
        args = [str(tmp_path / "x.json")]
    with pytest.raises(SystemExit) as exc:
        main(["report", *args, "-o", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_spectrum_report_flag(tiny_llama: Path, tmp_path: Path) -> None:
    """``spectrum --report`` writes the same report that ``svdtool report`` renders from the saved result."""
    flag = tmp_path / "flag.html"
    main(["spectrum", str(tiny_llama), "--device", "cpu", "--out", str(tmp_path / "res"), "--report", str(flag)])
    later = make_report([tmp_path / "res"], tmp_path / "later.html")

    def body(text: str) -> str:
        return text[text.index("<main") : text.index("</main>")]

    assert body(flag.read_text()) == body(later.read_text())


def test_cli_startup_imports_no_plotting() -> None:
    code = "import sys, svdtool.cli; print(sorted(m for m in ('matplotlib', 'jinja2', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "matplotlib" not in out and "jinja2" not in out


# ---------------------------------------------------------------- the committed samples


def _make_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "scripts" / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE_REPORTS = _make_samples().REPORTS


def _committed(report: str) -> str:
    path = SAMPLES / report
    if not path.is_file():
        pytest.fail(f"{path} is missing: run python scripts/make_samples.py")
    return path.read_text()


def _figures_removed(text: str) -> str:
    return re.sub(r"<figure .*?</figure>", "<figure/>", text, flags=re.S)


def test_samples_present() -> None:
    assert {"smollm2-spectrum/report.html", "minilm-spectrum/report.html"} <= set(SAMPLE_REPORTS)
    for report in SAMPLE_REPORTS:
        assert (SAMPLES / report).is_file(), report


@pytest.mark.parametrize("report", sorted(SAMPLE_REPORTS))
def test_sample_reproduces(report: str, tmp_path: Path) -> None:
    """``svdtool report`` re-renders each committed sample from the committed results, identical up to the timestamp.

    The figures' bytes depend on matplotlib's version; with another version the rest of the page must still match.
    """
    committed = _committed(report)
    generated = re.search(r'<time id="generated" datetime="([^"]+)"', committed)
    assert generated
    fresh = make_report([SAMPLES / f for f in SAMPLE_REPORTS[report]], tmp_path / "r.html", generated.group(1))
    text = fresh.read_text()
    assert _figures_removed(text) == _figures_removed(committed) or text == committed
    made_with = re.search(r'<meta name="generator" content="[^"]*matplotlib ([^"]+)">', committed)
    assert made_with
    if made_with.group(1) != metadata.version("matplotlib"):
        pytest.skip(f"samples drawn with matplotlib {made_with.group(1)}; figures not compared byte for byte")
    assert text == committed


@pytest.mark.parametrize("report", sorted(SAMPLE_REPORTS))
def test_sample_numbers_and_references(report: str) -> None:
    text = _committed(report)
    doc = Doc(text)
    results: dict[str, Any] = {}
    for folder in SAMPLE_REPORTS[report]:
        results.update(_load_json(SAMPLES / folder))
    assert check_tables(doc, results) > 100
    check_self_contained(text)
    check_accessible(doc)


def _sample_dirs(*names: str) -> list[Path]:
    dirs = [SAMPLES / n for n in names if (SAMPLES / n).is_dir()]
    if len(dirs) < 2:
        pytest.fail(f"sample results missing under {SAMPLES}: run python scripts/make_samples.py")
    return dirs


def test_combined_report(tmp_path: Path) -> None:
    """Spectrum, coverage and init of one model on one page: every section, every number, one header."""
    dirs = _sample_dirs("smollm2-spectrum", "smollm2-coverage", "smollm2-init")
    text = make_report(dirs, tmp_path / "all.html", GENERATED).read_text()
    doc = Doc(text)
    results: dict[str, Any] = {}
    for d in dirs:
        results.update(_load_json(d))
    assert {"claim", "rank-coverage", "gradient-coverage"} <= set(doc.by_id)
    assert ("init" in doc.by_id) == ("init" in results)
    assert check_tables(doc, results) > 1000
    assert {t["attrs"]["data-source"].split(".")[0] for t in doc.tables} == set(results)
    check_self_contained(text)
    check_accessible(doc)
    assert "different models" not in text
    # The header names each result with its folder and command.
    codes = doc.texts["code"]
    for kind, data in results.items():
        assert " ".join(data["manifest"]["command"]) in codes, kind


def test_results_of_different_models_are_flagged(tmp_path: Path) -> None:
    dirs = _sample_dirs("minilm-spectrum", "smollm2-coverage")
    doc = Doc(make_report(dirs, tmp_path / "mixed.html", GENERATED).read_text())
    assert any("different models" in p for p in doc.texts["p"])


@pytest.mark.parametrize("folder", ["smollm2-coverage", "smollm2-init"])
def test_report_flag_of_coverage_and_init(folder: str, tmp_path: Path) -> None:
    """``write_report_for`` (the --report flag) renders a result just computed as ``svdtool report`` does."""
    from svdtool.cli.report import write_report_for

    if not (SAMPLES / folder).is_dir():
        pytest.fail(f"{SAMPLES / folder} is missing: run python scripts/make_samples.py")
    inputs = load_results([SAMPLES / folder])
    result = inputs.coverage if inputs.coverage is not None else inputs.init
    write_report_for(result, None, tmp_path / "flag.html")
    later = make_report([SAMPLES / folder], tmp_path / "later.html")

    def body(text: str) -> str:
        return text[text.index("<main") : text.index("</main>")]

    assert body((tmp_path / "flag.html").read_text()) == body(later.read_text())


def test_init_report_flag(tiny_llama: Path, tmp_path: Path) -> None:
    """``init --report`` renders the init section from the result it just wrote, like ``svdtool report DIR``."""
    flag = tmp_path / "init.html"
    out = tmp_path / "pissa"
    main(["init", str(tiny_llama), "--method", "pissa", "--rank", "2", "--device", "cpu", "--out", str(out),
          "--report", str(flag)])  # fmt: skip
    later = make_report([out], tmp_path / "later.html")

    def body(text: str) -> str:
        return text[text.index("<main") : text.index("</main>")]

    assert body(flag.read_text()) == body(later.read_text())
    assert "reconstruction" in body(flag.read_text()).lower()
