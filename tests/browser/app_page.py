"""Actions on the onml Gradio app in a Playwright page, for the browser test."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

# Digits as strokes: each stroke is a polyline of (x, y) points, with x and y from -1 to 1
# relative to the centre of the drawing area (y grows downwards).
DIGIT_STROKES: dict[int, list[list[tuple[float, float]]]] = {
    1: [[(0.05, -0.75), (0.0, 0.0), (-0.05, 0.75)]],
    7: [[(-0.5, -0.65), (0.5, -0.65), (0.2, -0.1), (-0.1, 0.7)]],
}

TAB_BUTTON_NAMES = {"draw": "Draw · 画数字", "compare": "Compare · 比较版本", "training": "Training · 训练"}


class AppPage:
    """One browser tab showing the app."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url

    def open(self) -> "AppPage":
        self.page.goto(self.url)
        self.page.wait_for_selector("#sketchpad canvas")
        return self

    # Draw tab

    def draw(self, strokes: Sequence[Sequence[tuple[float, float]]], steps_per_segment: int = 12) -> None:
        """Select the brush and draw ``strokes`` with mouse events on the sketch canvas."""
        self.page.locator("#sketchpad button[aria-label='Brush']").first.click()
        box = self.page.locator("#sketchpad canvas").first.bounding_box()
        assert box is not None, "the sketch canvas is not visible"
        # The drawing area is a square centred in the canvas element.
        centre_x = box["x"] + box["width"] / 2
        centre_y = box["y"] + box["height"] / 2
        half = 0.4 * min(box["width"], box["height"])
        mouse = self.page.mouse
        for stroke in strokes:
            points = [(centre_x + x * half, centre_y + y * half) for x, y in stroke]
            mouse.move(*points[0])
            mouse.down()
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                for step in range(1, steps_per_segment + 1):
                    fraction = step / steps_per_segment
                    mouse.move(x0 + (x1 - x0) * fraction, y0 + (y1 - y0) * fraction)
            mouse.up()
        # The editor exports the composite shortly after the last stroke.
        self.page.wait_for_timeout(500)

    def clear_canvas(self) -> None:
        self.page.locator("#sketchpad button[aria-label='Clear canvas']").first.click()
        self.page.wait_for_timeout(300)

    def wait_until_done(self, selectors: Sequence[str], timeout_s: float) -> None:
        """Wait until Gradio no longer shows the components in ``selectors`` as pending."""
        # Gradio shows its status tracker as soon as an event is queued.
        self.page.wait_for_timeout(300)
        self.page.wait_for_function(
            "(selectors) => selectors.every((selector) => {"
            " const box = document.querySelector(selector);"
            " if (!box) return false;"
            " const tracker = box.querySelector('[data-testid=status-tracker]');"
            " return (!tracker || tracker.classList.contains('hide')) && !box.querySelector('.pending'); })",
            arg=list(selectors), timeout=timeout_s * 1000)

    def classify(self, timeout_s: float = 30.0) -> str:
        """Press Classify, wait until the result is no longer pending and return its text."""
        self.page.locator("#classify").click()
        self.wait_until_done(["#answer-details", "#predicted-digit"], timeout_s)
        return self.page.locator("#answer-details").inner_text().strip()

    def predicted_digit(self) -> str:
        return self.page.locator("#predicted-digit .onml-digit").get_attribute("data-digit") or ""

    @staticmethod
    def answered_version(details: str) -> int | None:
        match = re.search(r"(?:version|版本)\s*(\d+)", details)
        return None if match is None else int(match.group(1))

    # Other tabs and the language

    def open_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=TAB_BUTTON_NAMES[name]).click()

    def compare(self, timeout_s: float = 60.0) -> str:
        """Open the Compare tab, wait for the version list, press Compare and return the table's text."""
        self.open_tab("compare")
        self.page.locator("#compare-versions input[type=checkbox]").first.wait_for()
        self.page.wait_for_function(
            "document.querySelectorAll('#compare-versions input[type=checkbox]:checked').length > 0",
            timeout=timeout_s * 1000)
        self.page.locator("#compare").click()
        self.wait_until_done(["#compare-status", "#compare-table", "#compare-plot"], timeout_s)
        # Gradio renders table rows lazily, so the test reads the table's text, where every
        # scored version has an age ('12 s ago' or '12 秒前').
        self.page.wait_for_function(
            "/(ago|前)/.test(document.querySelector('#compare-table').innerText) && "
            "document.querySelector('#compare-plot img') !== null",
            timeout=timeout_s * 1000)
        return self.page.locator("#compare-table").inner_text()

    @staticmethod
    def compared_versions(table: str) -> int:
        """Count the versions in the Compare table's text by their age column."""
        return len(re.findall(r"\d+ (?:s|min|h|d) ago|\d+ (?:秒|分钟|小时|天)前", table))

    def training(self, timeout_s: float = 60.0) -> str:
        """Open the Training tab, wait for both plots and the timeline, and return the summary text."""
        self.open_tab("training")
        self.page.wait_for_function(
            "document.querySelector('#accuracy-plot img') !== null && "
            "document.querySelector('#throughput-plot img') !== null && "
            "/\\d{4}-\\d{2}-\\d{2}/.test(document.querySelector('#snapshot-timeline').innerText)",
            timeout=timeout_s * 1000)
        return self.page.locator("#snapshot-summary").inner_text()

    def set_language(self, language: str) -> None:
        label = {"en": "English", "zh": "中文"}[language]
        self.page.locator("#language").get_by_label(label).check()
        expected = {"en": "Classify", "zh": "识别"}[language]
        self.page.wait_for_function(
            f"document.querySelector('#classify') && document.querySelector('#classify').innerText.trim() === "
            f"'{expected}'")

    def screenshot(self, name: str, folders: Sequence[Path]) -> list[Path]:
        """Save a full-page PNG named ``name`` into each folder; return the paths."""
        self.page.wait_for_timeout(400)
        paths = []
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}.png"
            self.page.screenshot(path=str(path), full_page=True)
            paths.append(path)
        return paths
