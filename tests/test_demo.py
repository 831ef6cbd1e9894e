"""demo.py end to end: a real headless chromium drives the page, gradio_client calls its API, two
requests at once both finish, and a bad request shows a message while the next one still works.
The server runs the tiny run's model and AR baseline on a free port of 127.0.0.1."""

import os
import re
import shutil
import socket
import tempfile

import pytest
import torch

import cli
import demo
from cli import UsageError
from config import GenConfig
from demo import DemoConfig
from diffusion import mask_counts
from visualize import MASK_GLYPH, canvas_html

APT = "apt-get install -y chromium chromium-driver"
# gradio's queue calls pandas options that pandas 3 deprecates: its warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
PROMPT = "The history of"


def expected_passes(schedule: str, n: int, steps: int) -> int:
    """Forward passes of schedule decoding: one per step whose mask count drops."""
    counts = mask_counts(schedule, n, steps)
    return sum(a > b for a, b in zip(counts, counts[1:]))


def settings(**over) -> list:
    """The page's settings in page order (the API's): GenConfig's defaults with `over` applied."""
    return [over.get(f.name, f.default) for f in demo.page_fields()]


def page(mode="prompt", text="", **over) -> dict:
    """One request's values by name, as the page's handler receives them."""
    return {"mode": mode, "prompt": text if mode == "prompt" else "", "template": text if mode == "template" else "",
            **{f.name: over.get(f.name, f.default) for f in demo.page_fields()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Pieces, without a server
# ---------------------------------------------------------------------------------------------


def test_page_values_are_read_by_name_not_position():
    values = page("prompt", "x", steps=3, k=7)
    shuffled = dict(reversed(list(values.items())))
    assert demo.page_config(shuffled, max_tokens=1024) == demo.page_config(values, max_tokens=1024)
    del values["steps"]
    with pytest.raises(UsageError, match="missing settings: steps"):
        demo.page_config(values, max_tokens=1024)


@pytest.mark.parametrize("mode,text,over,message", [
    ("prompt", "", {"steps": 0}, "--steps must be in [1, inf), got 0"),
    ("prompt", "", {"k": "abc"}, "--k must be a whole number, got 'abc'"),
    ("prompt", "", {"temperature": None}, "--temperature needs a value"),
    ("prompt", "", {"p": float("nan")}, "--p must be a finite number"),
    ("prompt", "", {"schedule": "zigzag"}, "--schedule must be one of"),
    ("prompt", "", {"length": 10 ** 6}, "demo.py --max-tokens"),
    ("template", "  ", {}, "the template is empty"),
    ("story", "", {}, "mode must be one of prompt, template"),
])
def test_bad_page_values_are_one_line(mode, text, over, message):
    with pytest.raises(UsageError) as e:
        demo.page_config({**page(text=text, **over), "mode": mode}, max_tokens=1024)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_page_values_become_a_gen_config():
    gc = demo.page_config(page("template", "A [MASK:2] b", steps=3.0, k="7", seed=5), max_tokens=1024)
    assert (gc.template, gc.prompt, gc.steps, gc.k, gc.seed, gc.num_samples) == ("A [MASK:2] b", "", 3, 7, 5, 1)


def test_canvas_html_marks_each_kind(tiny_model):
    _, tok, _ = tiny_model
    ids = tok("a < b", add_special_tokens=False)["input_ids"]
    m = tok.mask_token_id
    tokens = ids + [m, m]
    kinds = ["fixed"] * len(ids) + ["mask", "remasked"]
    out = canvas_html(tokens, kinds, [None] * len(tokens), tok)
    assert out.count(MASK_GLYPH) == 2 and 'class="tok remasked"' in out
    assert "&lt;" in out and "< " not in out  # token text is escaped
    done = canvas_html(ids, ["done"] * len(ids), [0.5] * len(ids), tok)
    assert done.count("background:hsl(") == len(ids) and 'title="confidence 0.50"' in done


def test_ar_generate_is_ar_steps_collected(tiny_model, tiny_baseline):
    from decoding import ar_generate, ar_steps
    from tokens import banned_ids
    from modeling import load_baseline

    _, tok, cfg = tiny_model
    ar, _ = load_baseline(tiny_baseline, tok, "tiny", cfg.max_len)
    start, gc = torch.full((2, 1), tok.bos_token_id), GenConfig(sampling="topk", temperature=1.0)
    columns = list(ar_steps(ar, start, 5, gc, banned_ids(tok), torch.Generator().manual_seed(3)))
    assert len(columns) == 5 and all(c.shape == (2, 1) for c in columns)
    whole = ar_generate(ar, start, 5, gc, banned_ids(tok), torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(columns, 1), whole)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_only_loopback_counts_as_local(host, loopback):
    assert demo.is_loopback(host) == loopback


def test_missing_or_incomplete_checkpoint_is_one_line_before_serving(tmp_path, capsys):
    port = free_port()
    for path, message in ((tmp_path / "missing", "no checkpoint"), (tmp_path, "incomplete checkpoint")):
        assert cli.cli(demo.main, ["--checkpoint", str(path), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and "python train.py --quick-test" in err and err.count("\n") == 1
    with socket.socket() as s:  # nothing was started on the port
        s.bind(("127.0.0.1", port))


def test_busy_port_is_one_line(tiny_run, tiny_baseline, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.cli(demo.main, ["--checkpoint", tiny_run[1], "--baseline", tiny_baseline, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: cannot serve on 127.0.0.1:{port}") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# The running page
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_run, tiny_baseline):
    """demo.serve on a free loopback port, no slow motion; always closed."""
    port = free_port()
    app = demo.serve(DemoConfig(checkpoint=tiny_run[1], baseline=tiny_baseline, port=port, pause=0.0, max_tokens=64))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def call(client, mode="prompt", prompt=PROMPT, template="", **over):
    """(diffusion lane, AR lane, chart, status) HTML as the last frame of one /generate call."""
    return client.predict(mode, prompt, template, *settings(**over), api_name="/generate")


def lane_passes(html: str) -> tuple[int, bool]:
    m = re.search(r'class="stats" data-passes="(\d+)" data-done="(\d)"', html)
    return int(m.group(1)), m.group(2) == "1"


def test_api_prompt_and_template(client):
    lane_d, lane_a, chart, status = call(client, length=5, steps=8, k=7)  # k: nucleus (the default) ignores it
    assert lane_passes(lane_d) == (expected_passes("linear", 5, 8), True) == (5, True)
    assert lane_passes(lane_a) == (5, True)  # the AR baseline writes the same length, a token a pass
    assert MASK_GLYPH not in lane_d + lane_a and PROMPT.split()[-1] in lane_d and "Done." in status
    assert status.count("note: ") == 1 and "note: --k 7 has no effect: only --sampling topk reads it" in status
    assert chart.count("<polyline") == 2
    lane_d, lane_a, _, status = call(client, mode="template", prompt="", template="The [MASK:3] of France", steps=3)
    assert "note: " not in status
    assert lane_passes(lane_d) == (3, True) and MASK_GLYPH not in lane_d and "France" in lane_d
    assert "cannot fill a template" in lane_a


def lane_seconds(html: str) -> float:
    return float(re.search(r'data-seconds="([0-9.]+)"', html).group(1))


def test_each_lane_shows_its_own_wall_time_and_the_status_names_the_first_to_finish(client):
    """The seconds on each lane are that lane's compute time (the pause excluded), shown as it
    writes and at the end, and the status's winner is the lane with the smaller time."""
    lane_d, lane_a, _, status = call(client, length=20)
    d, a = lane_seconds(lane_d), lane_seconds(lane_a)
    assert d > 0 and a > 0 and f"{d:.3f} s" in lane_d and f"{a:.3f} s" in lane_a
    winner = "Diffusion finished first" if d < a else "The AR baseline finished first"
    assert winner in status and f"diffusion {d:.3f} s, AR baseline {a:.3f} s for 20 tokens" in status


def test_measure_runs_races_through_the_page_and_reports_each_lane(tiny_run, tiny_baseline, capsys):
    argv = ["--checkpoint", tiny_run[1], "--baseline", tiny_baseline, "--port", str(free_port()), "--pause", "0",
            "--measure", "2"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    races = re.findall(r"race \d: diffusion ([0-9.]+) s, AR baseline ([0-9.]+) s", out)
    assert len(races) == 2 and all(float(d) > 0 and float(a) > 0 for d, a in races)
    wins = sum(float(d) < float(a) for d, a in races)
    assert f"diffusion finished first in {wins} of 2 races" in out


def test_two_requests_at_once_both_finish(client):
    jobs = [client.submit("prompt", PROMPT, "", *settings(length=12, steps=s), api_name="/generate") for s in (3, 6)]
    results = [j.result(timeout=60) for j in jobs]
    assert [lane_passes(r[0]) for r in results] == [(3, True), (6, True)]


@pytest.mark.parametrize("mode,prompt,template,over,message", [
    ("prompt", PROMPT, "", {"steps": 0}, "error: --steps must be in [1, inf)"),
    ("prompt", "word " * 40, "", {}, "error: prompt is"),
    ("template", "", "no spans here", {}, "error: the template has nothing to fill"),
    ("prompt", PROMPT, "", {"length": 40}, "exceed the window"),
    ("prompt", PROMPT, "", {"k": "inf"}, "error: --k must be a whole number, got &#x27;inf&#x27;"),
    ("prompt", PROMPT, "", {"p": [0.5]}, "error: --p must be a number, got [0.5]"),
    ("prompt", PROMPT, "", {"steps": 1.5}, "error: --steps must be a whole number, got 1.5"),
    ("story", PROMPT, "", {}, "error: mode must be one of prompt, template"),
    ("prompt", PROMPT, "", {"length": 30, "block_size": 2, "steps": 8}, "15 blocks x --steps 8 = 120 denoising steps"),
])
def test_bad_request_shows_a_message_and_the_next_one_works(client, mode, prompt, template, over, message):
    _, _, _, status = call(client, mode=mode, prompt=prompt, template=template, **over)
    assert message in status and 'class="message error"' in status
    lane_d, _, _, status = call(client, length=4, steps=2)
    assert lane_passes(lane_d) == (2, True) and "Done." in status


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(f"needs Debian's chromium and chromium-driver: {APT}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    b = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield b
    finally:
        b.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_value(browser, css, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(str(value))


def generate_and_wait(browser, error: bool = False):
    """Click Generate; wait for an error message, or for both lanes and the status to say done.
    (Neither is on the page before: a fresh page and an error both leave the lanes idle.)"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    if error:
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#status .message.error"))
        return
    WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".lane .stats[data-done='1']")) == 2
                                     and "Done." in b.find_element(By.CSS_SELECTOR, "#status").text)


def test_browser_types_a_prompt_and_watches_it_written(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#generate"))
    for f in demo.page_fields():  # every generation control is on the page
        assert browser.find_elements(By.CSS_SELECTOR, f"#gc-{f.name}"), f.name
    set_value(browser, "#prompt textarea", PROMPT)
    set_value(browser, "#gc-length input", 5)
    set_value(browser, "#gc-steps input", 8)
    generate_and_wait(browser)
    lane = browser.find_element(By.CSS_SELECTOR, "#diffusion-lane")
    canvas = lane.find_element(By.CSS_SELECTOR, ".canvas").text
    assert canvas.startswith(PROMPT) and len(canvas) > len(PROMPT) and MASK_GLYPH not in canvas
    shown = re.search(r"(\d+) forward passes", lane.find_element(By.CSS_SELECTOR, ".stats").text)
    assert int(shown.group(1)) == expected_passes("linear", 5, 8) == 5  # 8 steps, 3 of them commit nothing
    ar = browser.find_element(By.CSS_SELECTOR, "#ar-lane")
    assert MASK_GLYPH not in ar.text and re.search(r"\b5 forward passes", ar.text)
    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_bad_template_shows_a_message_then_generates(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#generate"))
    browser.find_element(By.XPATH, "//*[@id='mode']//label[contains(., 'template')]").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.CSS_SELECTOR, "#template textarea").is_displayed())
    set_value(browser, "#template textarea", "nothing to fill")
    generate_and_wait(browser, error=True)
    status = browser.find_element(By.CSS_SELECTOR, "#status").text
    assert status.startswith("error: the template has nothing to fill")
    set_value(browser, "#template textarea", "The [MASK:3] of France")
    set_value(browser, "#gc-steps input", 3)
    generate_and_wait(browser)
    canvas = browser.find_element(By.CSS_SELECTOR, "#diffusion-lane .canvas").text
    assert "France" in canvas and MASK_GLYPH not in canvas
    assert "Done." in browser.find_element(By.CSS_SELECTOR, "#status").text
