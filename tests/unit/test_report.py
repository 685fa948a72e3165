"""The funnel report is static and self-contained: every picture it links exists, every file
it returns is linked, numbers in report.json agree with the data, and text is escaped."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from review.report import FunnelStep, ReportData, ScoreSummary, Thumbnail, plot_sweep, render_report

SCRIPT_KEY = "abc_o001_c02<script>alert(1)</script>"


def _jpeg(colour, size=(240, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _data(rejections=None, ledger=None, thumbnails=None) -> ReportData:
    rng = np.random.default_rng(0)
    ssim = np.clip(rng.normal(0.96, 0.02, 500), 0.0, 1.0)
    leak = rng.uniform(0.0, 0.6, 500)
    clip_sim = np.full(37, 0.5)  # all equal, no threshold
    scores = [
        ScoreSummary("ssim_outside", "higher", 0.95, ssim, np.sort(ssim)[-120:]),
        ScoreSummary("mask_leak", "lower", 0.30, leak, leak[leak <= 0.30][:80]),
        ScoreSummary("clip_sim", "higher", None, clip_sim, clip_sim[:5]),
    ]
    if thumbnails is None:
        thumbnails = [
            Thumbnail("ssim_outside", "pass", "k0_o000_c00", 0.951, _jpeg("red")),
            Thumbnail("ssim_outside", "pass", "k1_o000_c01", 0.952, _jpeg("green")),
            Thumbnail("ssim_outside", "fail", SCRIPT_KEY, 0.949, _jpeg("blue")),
            Thumbnail("mask_leak", "fail", "k3_o002_c00", 0.31, _jpeg("gray", (400, 200))),
        ]
    return ReportData(
        title="counterfactory-demo v1",
        created_at="2024-05-01T12:00:00+00:00",
        funnel=[
            FunnelStep("bootstrap", "images_in", 14_000_000),
            FunnelStep("bootstrap", "objects_written", 700_000),
            FunnelStep("build", "candidate_objects", 700_000),
            FunnelStep("build", "passed_thresholds", 410_000),
            FunnelStep("build", "pairs_written", 350_000),
        ],
        rejections={"object_still_detected": 3, "low_ssim_outside": 40, "mask_leak": 40}
        if rejections is None else rejections,
        scores=scores,
        thumbnails=thumbnails,
        ledger={"inputs": 700_000, "written": 699_917, "rejected": {"low_ssim_outside": 40, "mask_leak": 40},
                "dead_letters": {"paste": 3}, "closed": True} if ledger is None else ledger,
        summary={"thresholds": {"ssim_outside": 0.95, "mask_leak": 0.3}, "decisions_sha256": "ab" * 32,
                 "models": ["yolo-v8n", "sam-vit-b"], "code_version": "0.1.0+g1234", "note": None,
                 "weight": 0.5},
    )


@pytest.fixture(scope="module")
def files():
    return render_report(_data())


def _img_srcs(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)


def test_every_expected_file_is_returned(files):
    expected = {
        "report.html", "report.json", "report/funnel.png", "report/reasons.png",
        "report/score_ssim_outside.png", "report/score_mask_leak.png", "report/score_clip_sim.png",
        "report/thumbs/ssim_outside_pass_00.jpg", "report/thumbs/ssim_outside_pass_01.jpg",
        "report/thumbs/ssim_outside_fail_00.jpg", "report/thumbs/mask_leak_fail_00.jpg",
    }
    assert set(files) == expected
    assert all(isinstance(v, bytes) and v for v in files.values())


def test_pngs_decode_with_a_plausible_size(files):
    pngs = [path for path in files if path.endswith(".png")]
    assert len(pngs) == 5
    for path in pngs:
        image = Image.open(io.BytesIO(files[path]))
        assert image.format == "PNG"
        image.load()
        width, height = image.size
        assert 400 <= width <= 1200 and 80 <= height <= 1200, (path, image.size)
    assert Image.open(io.BytesIO(files["report/thumbs/mask_leak_fail_00.jpg"])).size == (400, 200)


def test_html_links_exactly_the_returned_images_with_relative_paths(files):
    html = files["report.html"].decode("utf-8")
    srcs = _img_srcs(html)
    images = {p for p in files if p.endswith((".png", ".jpg"))}
    assert set(srcs) == images
    assert all(src.startswith("report/") for src in srcs)
    assert "<script" not in html.replace("&lt;script", "")  # no JavaScript of its own
    assert "http://" not in html and "https://" not in html


def test_json_numbers_match_the_data(files):
    data = _data()
    report = json.loads(files["report.json"].decode("utf-8"))
    assert report["title"] == data.title
    by_name = {s["name"]: s for s in report["scores"]}
    for summary in data.scores:
        entry = by_name[summary.name]
        assert entry["count"] == summary.values.size
        assert entry["chosen_count"] == summary.chosen.size
        assert entry["median"] == pytest.approx(np.median(summary.values))
        assert sum(entry["histogram"]["counts"]) == summary.values.size
        assert sum(entry["histogram"]["chosen_counts"]) == summary.chosen.size
        assert len(entry["histogram"]["edges"]) == 41
        if summary.threshold is None:
            assert entry["pass_share"] is None
        elif summary.better == "higher":
            assert entry["pass_share"] == pytest.approx(np.mean(summary.values >= summary.threshold))
        else:
            assert entry["pass_share"] == pytest.approx(np.mean(summary.values <= summary.threshold))
    assert 0.0 < by_name["ssim_outside"]["pass_share"] < 1.0
    assert 0.0 < by_name["mask_leak"]["pass_share"] < 1.0
    funnel = report["funnel"]
    assert [f["percent_of_stage_first"] for f in funnel] == pytest.approx([100.0, 5.0, 100.0, 410 / 7, 50.0])
    assert report["thumbnails"][2] == {"score": "ssim_outside", "side": "fail", "key": SCRIPT_KEY,
                                       "value": 0.949, "file": "report/thumbs/ssim_outside_fail_00.jpg"}
    assert report["rejections"] == data.rejections
    assert report["summary"]["note"] is None


def test_json_is_deterministic_and_strict(files):
    text = files["report.json"].decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text
    again = render_report(_data())
    assert again["report.json"] == files["report.json"]
    assert again["report.html"] == files["report.html"]
    assert again["report/funnel.png"] == files["report/funnel.png"]  # no version string or timestamp in PNGs


def test_keys_and_summary_values_are_escaped(files):
    html = files["report.html"].decode("utf-8")
    assert SCRIPT_KEY not in html
    assert "abc_o001_c02&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '{&#34;mask_leak&#34;:0.3,&#34;ssim_outside&#34;:0.95}' in html  # nested dict as compact JSON


def test_closing_ledger_is_green_and_an_open_one_is_red(files):
    assert 'id="ledger-open"' not in files["report.html"].decode("utf-8")
    open_ledger = {"inputs": 100, "written": 90, "rejected": {"mask_leak": 5}, "dead_letters": {}, "closed": False}
    html = render_report(_data(ledger=open_ledger))["report.html"].decode("utf-8")
    assert 'class="ledger-open"' in html and "DOES NOT CLOSE" in html
    # A ledger whose flag claims it closes but whose numbers do not is still red.
    lying = dict(open_ledger, closed=True)
    html = render_report(_data(ledger=lying))["report.html"].decode("utf-8")
    assert 'class="ledger-open"' in html and "100 inputs" in html


def test_no_rejections_means_no_reasons_plot():
    files = render_report(_data(rejections={}))
    assert "report/reasons.png" not in files
    html = files["report.html"].decode("utf-8")
    assert "No rejections" in html
    assert "report/reasons.png" not in html
    assert json.loads(files["report.json"])["plots"]["reasons"] is None


def test_scores_without_values_and_single_values_do_not_crash():
    data = _data(thumbnails=[Thumbnail("unknown_score", "pass", "k9", 1.0, _jpeg("white"))])
    data = ReportData(**{**data.__dict__, "scores": [
        ScoreSummary("empty", "higher", 0.5, np.array([]), np.array([])),
        ScoreSummary("single", "lower", 0.3, np.array([0.2]), np.array([0.2])),
        ScoreSummary("near_one", "higher", 0.9995, np.linspace(0.999, 1.0, 50), np.array([1.0])),
    ]})
    files = render_report(data)
    assert "report/score_empty.png" not in files
    Image.open(io.BytesIO(files["report/score_single.png"])).load()
    Image.open(io.BytesIO(files["report/score_near_one.png"])).load()
    scores = {s["name"]: s for s in json.loads(files["report.json"])["scores"]}
    assert scores["empty"]["pass_share"] is None and scores["empty"]["min"] is None
    assert scores["single"]["pass_share"] == 1.0
    html = files["report.html"].decode("utf-8")
    assert set(_img_srcs(html)) == {p for p in files if p.endswith((".png", ".jpg"))}
    assert "report/thumbs/unknown_score_pass_00.jpg" in files


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError):
        ScoreSummary("s", "bigger", 0.5, np.array([1.0]), np.array([]))
    with pytest.raises(ValueError):
        Thumbnail("s", "maybe", "k", 0.5, b"")
    data = _data()
    with pytest.raises(ValueError, match="duplicate"):
        render_report(ReportData(**{**data.__dict__, "scores": [data.scores[0], data.scores[0]]}))


def test_plot_sweep_returns_a_png():
    thresholds = np.linspace(0.9, 1.0, 21)
    png = plot_sweep("ssim_outside", "higher", thresholds, 1.0 - (thresholds - 0.9) * 10,
                     1.0 - (thresholds - 0.9) * 5, current=0.95)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.size == (700, 350)
    with pytest.raises(ValueError):
        plot_sweep("s", "higher", [0.1, 0.2], [1.0], [1.0], None)
    Image.open(io.BytesIO(plot_sweep("s", "lower", [], [], [], None))).load()


def test_rendering_in_threads_gives_the_same_files(files):
    # Beam workers render from several threads; the object API must not share pyplot state.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: render_report(_data()), range(3)))
    assert all(result == files for result in results)
