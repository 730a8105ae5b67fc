"""The tray icon's picture: what the daemon is doing, drawn with Pillow as a pure function of the status.

One classification, `tray_state`, decides both the glyph here and the words in `tray_menu`, so the icon and
its tooltip never disagree. Colour and symbol both differ between states, so they tell apart at a glance at
tray size (about 22 px) and for colour-blind users: a check when idle, sound bars when working (blue on a
GPU, orange on the CPU), pause bars when paused (grey by the user, violet while another program needs the
GPU's memory), `!` when the daemon cannot go on, a hollow ring when no daemon answers. The queue depth is a
dark badge at the bottom right; a red dot at the top right says some files failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from svdaemon.control import StatusSnapshot
from svdaemon.status_text import TrayState, to_do_count, tray_state

ICON_SIZE = 64
BADGE_LIMIT = 99

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BADGE_FILL: RGB = (32, 33, 36)
FAILED_DOT: RGB = (217, 48, 37)


GLYPH_COLOURS: dict[TrayState, RGB] = {
    TrayState.NOT_RUNNING: (154, 160, 166),
    TrayState.IDLE: (46, 158, 91),
    TrayState.WORKING: (47, 111, 219),
    TrayState.ON_CPU: (230, 126, 34),
    TrayState.PAUSED_BY_USER: (95, 99, 104),
    TrayState.YIELDING_VRAM: (142, 68, 173),
    TrayState.ERROR: (217, 48, 37),
}


@dataclass(frozen=True)
class IconLook:
    """Everything the picture depends on: equal looks draw equal images, so the tray redraws only on change."""

    state: TrayState
    pending: int  # files without their transcript yet (queued + running): the badge
    has_failed: bool


def icon_look(snapshot: StatusSnapshot | None) -> IconLook:
    if snapshot is None:
        return IconLook(TrayState.NOT_RUNNING, 0, False)
    return IconLook(tray_state(snapshot), to_do_count(snapshot.queue), snapshot.queue.get("failed", 0) > 0)


def badge_text(pending: int) -> str | None:
    """The badge's number, `99+` above 99, none for an empty queue."""
    if pending <= 0:
        return None
    return f"{BADGE_LIMIT}+" if pending > BADGE_LIMIT else str(pending)


def draw_icon(look: IconLook, size: int = ICON_SIZE) -> Image.Image:
    """The RGBA icon for `look`, drawn on a 64 px grid and scaled to `size`."""
    image = Image.new("RGBA", (ICON_SIZE, ICON_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    _draw_glyph(draw, look.state)
    if look.has_failed:
        draw.ellipse((44, 1, 62, 19), fill=FAILED_DOT, outline=WHITE, width=2)
    text = badge_text(look.pending)
    if text is not None:
        _draw_badge(draw, text)
    return image if size == ICON_SIZE else image.resize((size, size), Image.Resampling.LANCZOS)


def _draw_glyph(draw: ImageDraw.ImageDraw, state: TrayState) -> None:
    colour = GLYPH_COLOURS[state]
    if state is TrayState.NOT_RUNNING:
        draw.ellipse((4, 4, 59, 59), outline=colour, width=7)
        return
    draw.ellipse((2, 2, 61, 61), fill=colour)
    _SYMBOLS[state](draw)


def _check(draw: ImageDraw.ImageDraw) -> None:
    draw.line([(17, 33), (28, 44), (47, 21)], fill=WHITE, width=7, joint="curve")


def _sound_bars(draw: ImageDraw.ImageDraw) -> None:
    for x, height in zip((14, 23, 32, 41, 50), (10, 24, 34, 20, 8), strict=True):
        draw.rounded_rectangle((x - 3, 32 - height // 2, x + 3, 32 + height // 2), radius=3, fill=WHITE)


def _pause_bars(draw: ImageDraw.ImageDraw) -> None:
    draw.rounded_rectangle((20, 17, 28, 47), radius=2, fill=WHITE)
    draw.rounded_rectangle((36, 17, 44, 47), radius=2, fill=WHITE)


def _exclamation(draw: ImageDraw.ImageDraw) -> None:
    draw.rounded_rectangle((28, 12, 36, 38), radius=3, fill=WHITE)
    draw.ellipse((27, 42, 37, 52), fill=WHITE)


_SYMBOLS = {
    TrayState.IDLE: _check,
    TrayState.WORKING: _sound_bars,
    TrayState.ON_CPU: _sound_bars,
    TrayState.PAUSED_BY_USER: _pause_bars,
    TrayState.YIELDING_VRAM: _pause_bars,
    TrayState.ERROR: _exclamation,
}


def _draw_badge(draw: ImageDraw.ImageDraw, text: str) -> None:
    """A dark pill anchored at the bottom right, wide enough for its text; white-rimmed to stand off the disc."""
    font = ImageFont.load_default(size=22 if len(text) < 3 else 19)  # Pillow's own font: same pixels anywhere
    text_width = draw.textlength(text, font=font) + 2  # the stroke widens it by a pixel each side
    height = 30
    width = max(height, round(text_width) + 12)
    box = (ICON_SIZE - width, ICON_SIZE - height, ICON_SIZE - 1, ICON_SIZE - 1)
    draw.rounded_rectangle(box, radius=height // 2, fill=BADGE_FILL, outline=WHITE, width=2)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    draw.text(centre, text, font=font, fill=WHITE, anchor="mm", stroke_width=1, stroke_fill=WHITE)
