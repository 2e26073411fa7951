"""The page in real headless Chromium (Debian's), against a real uvicorn server.

One server per module serves a small rendered demo dataset (with previews) and a
metadata-only file. Every test saves a screenshot to ``test-artifacts/`` (so a failure leaves
one of the moment it failed) and fails on any console error or uncaught exception, except the
network errors it provokes on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_gpu import load_dataset
from tessera_gpu.errors import TesseraError

from .conftest import free_port, write_episode_file

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SERVER = """
import sys, uvicorn
from pathlib import Path
from tessera_app.main import create_app
from tessera_gpu.settings import Settings
port, data_dir, *files = sys.argv[1:]
app = create_app(Settings(device="cpu", data_dir=Path(data_dir)), files=[Path(f) for f in files])
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""
# data point -> page pixel, through the map's own Bokeh scales
TO_SCREEN = """([x, y]) => {
  const doc = Bokeh.documents[Bokeh.documents.length - 1];
  const view = Bokeh.index.get(doc.get_model_by_name("map"));
  const box = document.getElementById("map-root").getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(x), box.top + view.frame.y_scale.compute(y)];
}"""
MAP_READY = """() => window.Bokeh && Bokeh.documents.length > 0 &&
  Bokeh.documents[Bokeh.documents.length - 1].get_model_by_name("map") !== null"""

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


def api(base: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def demo_file(folder: Path) -> Path:
    """The rendered demo (real GIFs and thumbnails), or the conftest file if it is absent."""
    try:
        from tessera_gpu.io.demo import build_demo
    except ImportError:
        return write_episode_file(folder / "demo.h5", dim=32)
    return Path(build_demo(folder / "demo.h5", episodes=300, dim=64))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, metadata_only_file: Path) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("browser")
    demo = demo_file(folder)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), str(folder / "data"), str(demo),
             str(metadata_only_file)], cwd=ROOT, env=env, stdout=out, stderr=out,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        datasets = wait_for_datasets(base, proc, log)
        ids = {d["name"]: d["id"] for d in datasets}
        wait_for_projection(base, ids["demo"])
        yield {"base": base, "demo": ids["demo"], "meta": ids[metadata_only_file.stem]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for_datasets(base: str, proc: subprocess.Popen[bytes], log: Path) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            datasets = api(base, "/api/datasets")
            if len(datasets) == 2:
                return datasets  # type: ignore[no-any-return]
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not start")


def wait_for_projection(base: str, dataset_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = api(base, f"/api/datasets/{dataset_id}/projection")
        if status["status"] == "done":
            return
        assert status["status"] != "failed", status
        time.sleep(0.2)
    raise TimeoutError("projection did not finish")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def allowed_errors() -> list[str]:
    """Console errors a test provokes on purpose (regexes); every other one fails it."""
    return []


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, allowed_errors: list[str]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    context.close()
    unexpected = [e for e in errors if not any(re.search(a, e) for a in allowed_errors)]
    assert unexpected == [], f"console errors: {unexpected}"


def open_map(page: Any, server: dict, query: str = "") -> None:
    with page.expect_response(lambda r: "/tiles/" in r.url and r.status == 200) as tile:
        page.goto(f"{server['base']}/datasets/{server['demo']}{query}")
        page.wait_for_function(MAP_READY, timeout=30_000)
    assert tile.value.header_value("content-type") == "image/png"


# ---- the tests ---------------------------------------------------------------------------------


def test_map_tiles_arrive_and_legend_matches(page: Any, server: dict) -> None:
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    assert page.locator("#map-status").is_hidden()
    with page.expect_response(lambda r: "/tiles/" in r.url and "color_by=task" in r.url):
        page.select_option("#color-by", "task")
    legend = api(server["base"], f"/api/datasets/{server['demo']}/legend?color_by=task")
    first = legend["entries"][0]
    item = page.locator(f'.legend .item[data-value="{first["value"]}"]')
    item.wait_for()
    assert str(first["count"]) in item.inner_text()
    page.wait_for_function("() => location.search.includes('color=task')")  # the link holds it


def loneliest_point(base: str, dataset_id: str) -> tuple[str, float, float]:
    """The episode farthest from any other on the map: the cursor on it finds only it."""
    pts = api(base, f"/api/datasets/{dataset_id}/points")
    xy = np.column_stack([pts["x"], pts["y"]])
    gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    i = int(np.argmax(gaps.min(axis=1)))
    return pts["episode_id"][i], float(xy[i, 0]), float(xy[i, 1])


def hover_loneliest_episode(page: Any, server: dict) -> str:
    """Move the cursor onto the loneliest episode until its card shows it; return its id."""
    episode_id, x, y = loneliest_point(server["base"], server["demo"])
    sx, sy = page.evaluate(TO_SCREEN, [x, y])
    page.mouse.move(sx - 60, sy - 60)
    page.mouse.move(sx, sy, steps=4)
    page.wait_for_function(
        "(id) => document.getElementById('episode-id').innerText === id", arg=episode_id
    )
    return episode_id


def test_hover_plays_the_episode_preview(page: Any, server: dict) -> None:
    open_map(page, server)
    hover_loneliest_episode(page, server)
    page.wait_for_function(
        "() => { const i = document.getElementById('preview-img');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; }"
    )
    assert page.get_attribute("#preview-img", "src").endswith("/gif")
    assert "task" in page.inner_text("#episode-meta")


def test_filter_changes_the_count_and_the_tiles(page: Any, server: dict) -> None:
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    field = page.locator('.field[data-field="task"]')
    first_value = field.locator(".value input").first.get_attribute("value")
    with page.expect_response(lambda r: "/tiles/" in r.url and "filter=" in r.url):
        field.locator(".value input").first.uncheck()
    cond = [{"field": "task", "op": "not_in", "value": [first_value]}]
    expected = api(server["base"], f"/api/datasets/{server['demo']}/count", {"filter": cond})
    page.wait_for_selector(f"text={expected['count']} of 300 episodes match")
    page.wait_for_function("() => location.search.includes('filter=')")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "field-search"


X_SPAN = """() => { const r = Bokeh.documents[Bokeh.documents.length - 1]
  .get_model_by_name("x_range"); return r.end - r.start; }"""


def test_keyboard_zoom_box_selection_and_escape(page: Any, server: dict) -> None:
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    span = page.evaluate(X_SPAN)
    page.keyboard.press("+")
    assert page.evaluate(X_SPAN) == pytest.approx(span / 1.5)
    page.wait_for_function("() => location.search.includes('view=')")  # the link holds it
    page.keyboard.press("-")
    page.locator(".bk-tool-icon-box-select").first.click()
    box = page.locator("#map-root").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 150, cy - 150)
    page.mouse.down()
    page.mouse.move(cx + 10, cy + 10, steps=5)
    page.mouse.up()
    page.wait_for_selector("#selection-chip:not([hidden])")
    page.wait_for_function(
        "() => !/^300 of/.test(document.getElementById('match-count').innerText)"
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("text=300 of 300 episodes match")
    assert page.locator("#selection-chip").is_hidden()


def test_stratified_sample_is_drawn_and_exported(page: Any, server: dict) -> None:
    open_map(page, server)
    page.select_option("#sample-method", "stratified")
    page.select_option("#sample-stratify", "task")
    page.fill("#sample-n", "30")
    page.click("#sample-generate")
    page.wait_for_selector("#sample-result:not([hidden])")
    assert page.locator("#sample-strata tr").count() >= 2
    drawn = page.evaluate("() => Bokeh.documents[Bokeh.documents.length - 1]"
                          ".get_model_by_name('sample').data.x.length")  # fmt: skip
    assert drawn == 30
    with page.expect_download() as download:
        page.click("#export-txt")
    ids = Path(download.value.path()).read_text().split()
    sample_id = page.get_attribute("#export-txt", "href").split("/samples/")[1].split("/")[0]
    manifest = api(server["base"], f"/api/datasets/{server['demo']}/samples/{sample_id}")
    assert ids == manifest["episode_ids"]
    assert len(ids) == 30
    assert manifest["method"] == "stratified"
    assert manifest["params"]["stratify_by"] == "task"


def test_sample_size_follows_a_small_match_count(page: Any, server: dict) -> None:
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    assert page.input_value("#sample-n") == "100"
    first = page.locator('.field[data-field="task"] .value input').first.get_attribute("value")
    cond = [{"field": "task", "op": "in", "value": [first]}]
    count = api(server["base"], f"/api/datasets/{server['demo']}/count", {"filter": cond})
    matched = count["count"]
    assert matched < 100  # the demo's tasks are smaller than the default n
    open_map(page, server, "?filter=" + urllib.parse.quote(json.dumps(cond)))
    page.wait_for_selector(f"text={matched} of 300 episodes match")
    assert page.input_value("#sample-n") == str(matched)  # the default follows the count down
    page.fill("#sample-n", str(matched + 1))  # more than match: refused before it is sent
    assert not page.eval_on_selector("#sample-n", "e => e.checkValidity()")
    page.fill("#sample-n", str(matched))
    page.click("#sample-generate")
    page.wait_for_selector("#sample-result:not([hidden])")
    assert page.inner_text("#sample-summary").startswith(f"{matched} episodes")
    if page.input_value("#sample-method") == "kmeans":  # every episode: no gain to report
        assert page.inner_text("#sample-coverage") == "every matching episode: coverage is complete"
    panel = page.locator("#sample-result").bounding_box()
    drop = page.locator("#export-lerobot-drop").bounding_box()
    assert drop["x"] + drop["width"] <= panel["x"] + panel["width"]  # no export button cut off


def bad_file(folder: Path) -> tuple[Path, str]:
    """A file breaking the format (a duplicate id), and the message the server gives."""

    def duplicate(f: Any) -> None:
        ids = f["episode_ids"][()]
        ids[1] = ids[0]
        del f["episode_ids"]
        f.create_dataset("episode_ids", data=ids)

    path = write_episode_file(folder / "broken.h5", n=20, previews=False, edit=duplicate)
    with pytest.raises(TesseraError) as err:
        load_dataset(path)
    return path, err.value.message


@pytest.mark.parametrize("allowed_errors", [[r"status of 422"]])
def test_upload_of_an_invalid_file_shows_the_error(page: Any, server: dict, tmp_path: Path) -> None:
    path, message = bad_file(tmp_path)
    page.goto(f"{server['base']}/datasets/{server['demo']}")
    page.click("#upload-button")
    page.set_input_files("#upload-input", str(path))
    page.wait_for_selector("#upload-error:not([hidden])", timeout=20_000)
    assert page.inner_text("#upload-error") == message


def test_metadata_only_dataset_explains_and_samples(page: Any, server: dict) -> None:
    page.goto(f"{server['base']}/datasets/{server['meta']}")
    page.wait_for_selector("text=metadata-only")
    page.wait_for_selector('#overview .chart[data-chart="task"]')  # the distributions
    assert "no embeddings" in page.inner_text("#overview")
    assert page.locator('#sample-method option[value="kmeans"]').is_disabled()
    page.select_option("#sample-method", "random")
    page.fill("#sample-n", "10")
    page.click("#sample-generate")
    page.wait_for_selector("#sample-result:not([hidden])")
    with page.expect_download() as download:
        page.click("#export-json")
    manifest = json.loads(Path(download.value.path()).read_text())
    assert manifest["n"] == 10
    assert len(set(manifest["episode_ids"])) == 10


# ---- curation: find similar, near-duplicates --------------------------------------------------


def wait_for_similarity(base: str, dataset_id: str) -> None:
    deadline = time.monotonic() + 120
    while api(base, f"/api/datasets/{dataset_id}/similarity")["status"] != "done":
        assert time.monotonic() < deadline, "the similarity graph was not built"
        time.sleep(0.2)


RINGED = """() => Bokeh.documents[Bokeh.documents.length - 1]
  .get_model_by_name('similar').data.episode_id"""


def test_find_similar_rings_the_answer_and_becomes_a_filter(page: Any, server: dict) -> None:
    wait_for_similarity(server["base"], server["demo"])
    open_map(page, server)
    episode_id = hover_loneliest_episode(page, server)
    page.click("#find-similar")
    tiles = page.locator("#similar-strip .tile")
    tiles.nth(12).wait_for()
    assert tiles.count() == 13  # the episode and its 12 nearest
    index = int(tiles.nth(0).get_attribute("data-index"))
    expected = api(server["base"], f"/api/datasets/{server['demo']}/episodes/{index}/similar?k=12")
    shown = [tiles.nth(i).get_attribute("title") for i in range(13)]
    assert shown == [episode_id] + [n["episode_id"] for n in expected["neighbors"]]
    page.wait_for_function(f"() => ({RINGED})().length === 13")
    assert sorted(page.evaluate(RINGED)) == sorted(shown)  # ringed on the map
    still = tiles.nth(1).locator("img").get_attribute("src")
    tiles.nth(1).hover()  # the GIF plays on hover
    page.wait_for_function(
        "() => document.querySelectorAll('#similar-strip .tile img')[1].src.endsWith('/gif')"
    )
    assert still.endswith("/thumbnail")
    page.click("#similar-filter")
    page.wait_for_selector("text=13 of 300 episodes match")
    assert "13 chosen episodes" in page.inner_text("#pinned-chips")
    page.wait_for_function("() => location.search.includes('episode_id')")  # shareable


def test_duplicates_panel_counts_live_and_keeps_one_per_group(page: Any, server: dict) -> None:
    wait_for_similarity(server["base"], server["demo"])
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    page.click("#tab-button-duplicates")
    url = f"/api/datasets/{server['demo']}/duplicates"
    for value in ("0.05", "0.2"):
        page.evaluate(
            "(v) => { const s = document.getElementById('dup-threshold'); s.value = v;"
            " s.dispatchEvent(new Event('input')); }",
            value,
        )
        expected = api(server["base"], url, {"threshold": float(value), "limit": 0})
        page.wait_for_function(
            "([g, r]) => document.getElementById('dup-summary').innerText.startsWith("
            "`${g} groups · ${r} episodes`)",
            arg=[f"{expected['n_groups']:,}", f"{expected['removed']:,}"],
        )
    assert expected["n_groups"] > 0, "the demo has near-duplicates at 0.2"
    shown = page.locator("#dup-groups .group")
    shown.first.wait_for()
    assert shown.count() == min(12, expected["n_groups"])
    first = api(server["base"], url, {"threshold": 0.2, "limit": 1})["groups"][0]
    keeper = shown.first.locator(".tile.keeper")
    assert keeper.get_attribute("data-index") == str(first[0])
    page.click("#dup-keep")
    page.wait_for_selector(f"text={300 - expected['removed']} of 300 episodes match")
    assert "one per near-duplicate group" in page.inner_text("#pinned-chips")


# ---- curation: selections, K-means without them, the LeRobot hand-off ------------------------


def test_a_lasso_becomes_a_selection_excluded_from_a_kmeans_sample(page: Any, server: dict) -> None:
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    page.locator(".bk-tool-icon-lasso-select").first.click()
    box = page.locator("#map-root").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    path = [(-150, -150), (120, -140), (140, 130), (-130, 150), (-150, -150)]
    page.mouse.move(cx + path[0][0], cy + path[0][1])
    page.mouse.down()
    for dx, dy in path[1:]:
        page.mouse.move(cx + dx, cy + dy, steps=8)
    page.mouse.up()
    page.wait_for_selector("#selection-chip:not([hidden])")
    page.wait_for_function(
        "() => !/^300 of/.test(document.getElementById('match-count').innerText)"
    )
    lassoed = int(page.inner_text("#match-count b").replace(",", ""))
    assert 0 < lassoed < 300
    page.click("#selection-save-open")
    page.fill("#selection-name", "bad grasp")
    page.click("#selection-save button[type=submit]")
    row = page.locator('.sel-row[data-selection="bad grasp"]')
    row.wait_for()
    assert row.locator(".count").inner_text() == str(lassoed)
    # the colour picker lists the new selection at once, without reopening the dataset
    page.wait_for_selector('#color-by option[value="selection:bad grasp"]', state="attached")
    page.keyboard.press("Escape")  # clear the lasso; the selection stays
    page.wait_for_selector("text=300 of 300 episodes match")
    row.locator(".state").click()  # only these
    page.wait_for_selector(f"text={lassoed} of 300 episodes match")
    row.locator(".state").click()  # exclude them
    page.wait_for_selector(f"text={300 - lassoed} of 300 episodes match")
    page.select_option("#sample-method", "kmeans")
    page.fill("#sample-n", "20")
    page.click("#sample-generate")
    page.wait_for_selector("#sample-result:not([hidden])", timeout=60_000)
    sample_id = page.get_attribute("#export-json", "href").split("/samples/")[1].split("/")[0]
    base, demo = server["base"], server["demo"]
    manifest = api(base, f"/api/datasets/{demo}/samples/{sample_id}")
    excluded = {"field": "selection", "op": "not_in", "value": ["bad grasp"]}
    assert excluded in manifest["filter"]
    export = api(base, f"/api/datasets/{demo}/selections/bad%20grasp/export?format=json")
    assert not set(export["episode_ids"]) & set(manifest["episode_ids"])
    with page.expect_download() as download:
        page.click("#export-lerobot")
    lerobot = json.loads(Path(download.value.path()).read_text())
    ids = json.dumps([{"field": "episode_id", "op": "in", "value": manifest["episode_ids"]}])
    pts = api(base, f"/api/datasets/{demo}/points?fields=dataset&filter={urllib.parse.quote(ids)}")
    expected: dict[str, list[int]] = {}
    for eid, name in zip(pts["episode_id"], pts["fields"]["dataset"], strict=True):
        expected.setdefault(name, []).append(int(eid.rsplit("_", 1)[1]))  # bridge_000012 -> 12
    assert lerobot == {"datasets": {k: sorted(v) for k, v in sorted(expected.items())}}


# ---- the page's rough edges: fit, overlays, picker, markers, cross-filter counts -------------

FRAME = """() => { const doc = Bokeh.documents[Bokeh.documents.length - 1];
  const view = Bokeh.index.get(doc.get_model_by_name("map"));
  const box = document.getElementById("map-root").getBoundingClientRect();
  const f = view.frame.bbox;
  return [box.left + f.left, box.top + f.top, box.left + f.right, box.top + f.bottom]; }"""
ALL_TO_SCREEN = """(points) => { const doc = Bokeh.documents[Bokeh.documents.length - 1];
  const view = Bokeh.index.get(doc.get_model_by_name("map"));
  const box = document.getElementById("map-root").getBoundingClientRect();
  return points.map(([x, y]) => [box.left + view.frame.x_scale.compute(x),
                                 box.top + view.frame.y_scale.compute(y)]); }"""


def fitted(page: Any, after: int = 0) -> int:
    """Wait until the page has fitted the map more than ``after`` times and Bokeh has drawn
    it; return the count."""
    page.wait_for_function("(n) => Number(document.body.dataset.mapFits || 0) > n", arg=after)
    page.wait_for_timeout(300)  # Bokeh re-lays out and redraws on the next frames
    return int(page.evaluate("() => Number(document.body.dataset.mapFits)"))


def assert_points_clear_of_overlays(page: Any, server: dict) -> None:
    """Every episode lies inside the map's frame, and none under the colour/legend box."""
    pts = api(server["base"], f"/api/datasets/{server['demo']}/points")
    screen = np.array(page.evaluate(ALL_TO_SCREEN, list(zip(pts["x"], pts["y"], strict=True))))
    left, top, right, bottom = page.evaluate(FRAME)
    inside = ((screen[:, 0] >= left + 2) & (screen[:, 0] <= right - 2)
              & (screen[:, 1] >= top + 2) & (screen[:, 1] <= bottom - 2))  # fmt: skip
    assert inside.all(), f"{int((~inside).sum())} episodes drawn outside the map's frame"
    box = page.locator("#map-controls").bounding_box()
    under = ((screen[:, 0] >= box["x"] - 3) & (screen[:, 0] <= box["x"] + box["width"] + 3)
             & (screen[:, 1] >= box["y"] - 3))  # fmt: skip
    assert not under.any(), f"the legend covers {int(under.sum())} episodes"


def test_the_map_fits_clear_of_the_legend_and_refits_when_the_drawer_opens(
    page: Any, server: dict
) -> None:
    """The map came at the pyramid's square, the legend over its bottom edge, and opening the
    drawer cropped it instead of fitting it again."""
    open_map(page, server)
    fits = fitted(page)
    assert_points_clear_of_overlays(page, server)
    page.click("#tab-button-groups")
    fits = fitted(page, fits)
    assert page.locator("#tab-groups").is_visible()
    assert_points_clear_of_overlays(page, server)
    page.click("#drawer-toggle")  # folded again: fitted again, the view still the default
    fitted(page, fits)
    assert_points_clear_of_overlays(page, server)
    assert "view=" not in page.evaluate("location.search")


def test_the_colour_picker_shows_the_selection_colouring(page: Any, server: dict) -> None:
    base, demo = server["base"], server["demo"]
    api(base, f"/api/datasets/{demo}/selections",
        {"name": "picks", "filter": [{"field": "task", "op": "eq", "value": "pick"}]})  # fmt: skip
    open_map(page, server)
    row = page.locator('.sel-row[data-selection="picks"]')
    with page.expect_response(lambda r: "/tiles/" in r.url and "selection%3Apicks" in r.url):
        row.locator('button[title="Colour the map by membership"]').click()
    assert page.eval_on_selector("#color-by", "s => s.value") == "selection:picks"  # not density
    page.wait_for_selector('.legend .item[data-value="in picks"]')


SAMPLE_IDS = """() => Bokeh.documents[Bokeh.documents.length - 1]
  .get_model_by_name('sample').data.episode_id"""


def test_sample_markers_follow_the_filter(page: Any, server: dict) -> None:
    """200 markers stayed drawn over 13 matching episodes."""
    open_map(page, server)
    page.select_option("#sample-method", "random")
    page.fill("#sample-n", "200")
    page.click("#sample-generate")
    page.wait_for_function(f"() => ({SAMPLE_IDS})().length === 200")
    sample_id = page.get_attribute("#export-json", "href").split("/samples/")[1].split("/")[0]
    ids = api(server["base"], f"/api/datasets/{server['demo']}/samples/{sample_id}")["episode_ids"]
    field = page.locator('.field[data-field="task"]')
    kept = field.locator(".value input").first.get_attribute("value")
    field.locator('.field-actions button:text("none")').click()
    field.locator(f'.value input[value="{kept}"]').check()
    cond = [{"field": "task", "op": "in", "value": [kept]},
            {"field": "episode_id", "op": "in", "value": ids}]  # fmt: skip
    expected = api(server["base"], f"/api/datasets/{server['demo']}/count", {"filter": cond})
    assert 0 < expected["count"] < 200
    page.wait_for_function(f"(n) => ({SAMPLE_IDS})().length === n", arg=expected["count"])
    shown = page.evaluate(SAMPLE_IDS)
    assert set(shown) <= set(ids)


HOVERED = """() => Bokeh.documents[Bokeh.documents.length - 1].get_model_by_name('hovered').data"""


def test_the_hovered_episode_is_ringed_on_the_map(page: Any, server: dict) -> None:
    open_map(page, server)
    episode_id, x, y = loneliest_point(server["base"], server["demo"])
    assert hover_loneliest_episode(page, server) == episode_id
    ringed = page.evaluate(HOVERED)
    assert ringed["episode_id"] == [episode_id]
    assert (ringed["x"][0], ringed["y"][0]) == pytest.approx((x, y))


def test_facet_counts_follow_the_other_filters(page: Any, server: dict) -> None:
    """The counts beside each value were the dataset's totals whatever the filter."""
    base, demo = server["base"], server["demo"]
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    page.locator('.field[data-field="success"] .value input[value="false"]').uncheck()
    success = [{"field": "success", "op": "eq", "value": True}]
    matched = api(base, f"/api/datasets/{demo}/count", {"filter": success})["count"]
    page.wait_for_selector(f"text={matched} of 300 episodes match")
    task = page.locator('.field[data-field="task"]')
    for label in task.locator(".value").all():
        value = label.locator("input").get_attribute("value")
        cond = [*success, {"field": "task", "op": "eq", "value": value}]
        expected = api(base, f"/api/datasets/{demo}/count", {"filter": cond})["count"]
        assert label.locator(".count").inner_text() == str(expected), value
    totals = {f["name"]: f for f in api(base, f"/api/datasets/{demo}")["fields"]}
    false_count = page.locator(
        '.field[data-field="success"] .value:has(input[value="false"]) .count'
    )
    assert false_count.inner_text() == str(totals["success"]["values"]["false"])  # its own: all


def test_the_cluster_confirmation_stays(page: Any, server: dict) -> None:
    """It was cleared at once, when the new field was listed."""
    open_map(page, server)
    page.click("#tab-button-groups")
    page.fill("#clusters-k", "3")
    page.click("#clusters-run")
    page.wait_for_selector("#clusters-state:text('3 clusters')", timeout=60_000)
    page.wait_for_selector('#group-by option[value="cluster"]', state="attached")
    page.wait_for_timeout(1_500)  # the fields refresh and the table redraw have happened
    assert page.inner_text("#clusters-state").startswith("3 clusters")


@pytest.mark.parametrize("allowed_errors", [[r"status of 400"]])
def test_a_failed_save_clears_its_error_when_the_form_closes(page: Any, server: dict) -> None:
    open_map(page, server)
    page.click("#selection-save-open")
    page.fill("#selection-name", "a/b")
    page.click("#selection-save button[type=submit]")
    page.wait_for_selector("#selection-error:not([hidden])")
    assert "cannot hold" in page.inner_text("#selection-error")
    page.click("#selection-save-open")  # close the form
    assert page.locator("#selection-save").is_hidden()
    assert page.locator("#selection-error").is_hidden()


def test_at_1280x720_the_exports_are_in_view(page: Any, server: dict) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    open_map(page, server)
    hover_loneliest_episode(page, server)  # the card holds an episode, as after any hover
    page.select_option("#sample-method", "stratified")
    page.select_option("#sample-stratify", "task")
    page.fill("#sample-n", "40")
    page.click("#sample-generate")
    page.wait_for_selector("#sample-result:not([hidden])")
    for fmt in ("txt", "csv", "json", "lerobot"):
        box = page.locator(f"#export-{fmt}").bounding_box()
        assert box["y"] >= 48
        assert box["y"] + box["height"] <= 720, (fmt, box)
    assert page.evaluate("document.getElementById('side-panel').scrollTop") == 0


def hex_color(rgb: Any) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def lightness(color: str) -> float:
    """CIE L* of an sRGB hex colour."""
    rgb = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return 116 * y ** (1 / 3) - 16 if y > 0.008856 else 903.3 * y


def test_number_colouring_is_readable_on_the_map(page: Any, server: dict) -> None:
    """viridis began at a dark purple (L* 15) on the map's near-black (L* 5)."""
    open_map(page, server)
    with page.expect_response(lambda r: "/tiles/" in r.url and "episode_length" in r.url):
        page.select_option("#color-by", "episode_length")
    legend = api(server["base"], f"/api/datasets/{server['demo']}/legend?color_by=episode_length")
    page.wait_for_selector(".legend .ramp")
    ramp = page.get_attribute(".legend .ramp", "style")
    shown = re.findall(r"rgb\((\d+), (\d+), (\d+)\)", ramp)
    assert [hex_color(c) for c in shown] == [c.lower() for c in legend["colormap"]]
    background = "#0f1115"
    assert min(lightness(c) for c in legend["colormap"]) >= lightness(background) + 30


def test_a_tiny_dataset_is_drawn_in_the_legends_colours(
    page: Any, server: dict, tmp_path: Path
) -> None:
    """With one episode per pixel, eq_hist put every pixel at the 'dense' end: white points
    under a red-to-yellow legend."""
    import io

    import httpx
    from PIL import Image

    from tessera_gpu.io.writer import write_dataset

    rng = np.random.default_rng(7)
    tiny = write_dataset(tmp_path / "tiny.h5", embeddings=rng.normal(size=(12, 8)).astype("f4"),
                         episode_ids=[f"t{i}" for i in range(12)])  # fmt: skip
    r = httpx.post(f"{server['base']}/api/datasets", timeout=60,
                   files={"file": ("tiny.h5", tiny.read_bytes(), "application/x-hdf5")})  # fmt: skip
    assert r.status_code == 201, r.text
    tiny_id = r.json()["id"]
    wait_for_projection(server["base"], tiny_id)
    page.goto(f"{server['base']}/datasets/{tiny_id}")
    page.wait_for_function(MAP_READY, timeout=30_000)
    page.wait_for_selector(".legend .ramp")
    legend = api(server["base"], f"/api/datasets/{tiny_id}/legend")
    tile = httpx.get(f"{server['base']}/api/datasets/{tiny_id}/tiles/0/0/0.png", timeout=30)
    pixels = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGBA")).reshape(-1, 4)
    drawn = {hex_color(p[:3]) for p in pixels if p[3] > 0}
    assert drawn == {legend["colormap"][0]}  # the legend's "sparse" end, nothing else


# ---- the page's plumbing: only the newest answer is shown; polls stop ------------------------


def test_an_older_count_never_replaces_a_newer_one(page: Any, server: dict) -> None:
    """The first of two filter changes is answered last (held back by the test): the count
    and the facet counts stay those of the second."""
    base, demo = server["base"], server["demo"]
    held: list[Any] = []
    open_map(page, server)
    page.wait_for_selector("text=300 of 300 episodes match")
    page.route("**/facets", lambda route: held.append(route) if not held else route.continue_())
    success = [{"field": "success", "op": "eq", "value": True}]
    task = page.locator('.field[data-field="task"] .value input').first
    both = [*success, {"field": "task", "op": "not_in", "value": [task.get_attribute("value")]}]
    first, second = (api(base, f"/api/datasets/{demo}/count", {"filter": f})["count"]
                     for f in (success, both))  # fmt: skip
    assert first != second
    with page.expect_request("**/facets"):
        page.locator('.field[data-field="success"] .value input[value="false"]').uncheck()
    task.uncheck()
    page.wait_for_selector(f"text={second} of 300 episodes match")
    shown = page.inner_text("#filter-fields")
    with contextlib.suppress(playwright_api.Error):  # the page may have aborted it: fine too
        held[0].fulfill(response=held[0].fetch())
    page.wait_for_timeout(500)  # the first answer, if the page took it, is drawn by now
    assert page.inner_text("#match-count") == f"{second} of 300 episodes match"
    assert page.inner_text("#filter-fields") == shown


RUNNING = {"status": "running", "progress": 0.5, "stage": "layout", "elapsed_s": 1.0, "error": None}
HIDE = "(h) => { window.testHidden = h; document.dispatchEvent(new Event('visibilitychange')); }"
OPEN_IN_PLACE = """async (id) => {
  const { apiUrl, getJSON } = await import("/static/app/api.js");
  const { openDataset } = await import("/static/app/state.js");
  openDataset(await getJSON(apiUrl(id)));
}"""


class RunningJobs:
    """The demo's projection and similarity jobs answered as running, so the page polls both;
    ``asked`` lists the polls' requests, and while ``holding`` their answers wait in ``held``."""

    def __init__(self, page: Any, server: dict) -> None:
        self.asked: list[str] = []
        self.held: list[Any] = []
        self.holding = False
        for job in ("projection", "similarity"):
            page.route(f"**/api/datasets/{server['demo']}/{job}", self.answer)
        page.goto(f"{server['base']}/datasets/{server['demo']}")
        page.wait_for_selector("#map-status-text:has-text('layout 50%')")
        page.wait_for_selector("#similarity-state:has-text('50%')")
        wait_until(page, lambda: sum("/projection" in u for u in self.asked) >= 3)

    def answer(self, route: Any) -> None:
        self.asked.append(route.request.url)
        if self.holding:
            self.held.append(route)
        else:
            self.fulfill(route)

    def fulfill(self, route: Any) -> None:
        job = {"kind": "similarity", "params": {}} if "/similarity" in route.request.url else {}
        with contextlib.suppress(playwright_api.Error):  # the page gave up on it: fine
            route.fulfill(json={**RUNNING, **job})

    def held_jobs(self) -> set[str]:
        return {route.request.url.rsplit("/", 1)[1] for route in self.held}

    def release(self) -> None:
        self.holding = False
        while self.held:
            self.fulfill(self.held.pop())


def wait_until(page: Any, done: Any, timeout_s: float = 20) -> None:
    """Let the page run (its route handlers too) until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(100)


def test_polls_stop_when_another_dataset_opens(page: Any, server: dict) -> None:
    jobs = RunningJobs(page, server)
    jobs.holding = True  # a call of each poll is on its way when the other dataset opens
    wait_until(page, lambda: jobs.held_jobs() == {"projection", "similarity"})
    page.evaluate(OPEN_IN_PLACE, server["meta"])
    page.wait_for_selector('#overview .chart[data-chart="task"]')  # the other one is open
    before = len(jobs.asked)
    jobs.release()
    page.wait_for_timeout(2_500)  # four times the projection's period
    assert len(jobs.asked) == before, jobs.asked[before:]
    # and the answers on their way showed nothing of the old dataset's jobs
    assert page.locator("#map-status").is_hidden()
    assert page.inner_text("#similarity-state") == ""
    assert page.eval_on_selector("#dataset-picker", "s => s.value") == server["meta"]


def test_polls_wait_while_the_page_is_hidden(page: Any, server: dict) -> None:
    page.add_init_script("""Object.defineProperty(document, "visibilityState",
      { configurable: true, get: () => (window.testHidden ? "hidden" : "visible") });""")
    jobs = RunningJobs(page, server)
    page.evaluate(HIDE, True)
    before = len(jobs.asked)
    page.wait_for_timeout(2_500)
    assert len(jobs.asked) <= before + 2, jobs.asked[before:]  # at most those on their way
    page.evaluate(HIDE, False)
    wait_until(page, lambda: len(jobs.asked) >= before + 4)  # both polls go on
    page.wait_for_selector("#map-status-text:has-text('layout 50%')")
