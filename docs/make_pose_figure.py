"""Draw docs/pose-axes.png: which way +yaw, +pitch and +roll point (``--pose``, fkpbatch.pose), in the
subject's terms, on a face of examples/. Run from the repository root:

    .venv/bin/python docs/make_pose_figure.py [--out docs/pose-axes.png]

The face is located by fkpbatch itself (its box and nose tip), so the arrows sit on it; the
conventions drawn are those of fkpbatch/pose.py's docstring.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import fkpbatch

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "Abdel_Aziz_Al-Hakim_00.jpg"
SIDE, PAD, TOP, BOTTOM = 200, 12, 30, 50  # face size, gap, title band, caption band (pixels)
ARROW, OUTLINE = (255, 205, 0), (0, 0, 0)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 40) -> list:
    """Points of an ellipse arc from ``start`` to ``end`` degrees (0 = image right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in (start + (end - start) * i / steps for i in range(steps + 1))
    ]


def arrow(draw: ImageDraw.ImageDraw, points: list, width: int = 4) -> None:
    """A polyline with an arrowhead at its last point, yellow on a black outline."""
    (x0, y0), (x1, y1) = points[-4], points[-1]
    angle = math.atan2(y1 - y0, x1 - x0)
    head = [(x1 + 5 * math.cos(angle), y1 + 5 * math.sin(angle))] + [
        (x1 + 13 * math.cos(angle + s * 2.6), y1 + 13 * math.sin(angle + s * 2.6)) for s in (-1, 1)
    ]
    draw.line(points, fill=OUTLINE, width=width + 3, joint="curve")
    draw.polygon(head, fill=OUTLINE, outline=OUTLINE, width=3)
    draw.line(points, fill=ARROW, width=width, joint="curve")
    draw.polygon(head, fill=ARROW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "pose-axes.png")
    args = parser.parse_args()
    face = fkpbatch.predict(PHOTO, faces="largest", workers=0).iloc[0]
    x, y, size = face["box_x"], face["box_y"], face["box_w"]
    crop = Image.open(PHOTO).convert("RGB").crop((round(x), round(y), round(x + size), round(y + size)))
    crop = crop.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    scale = SIDE / size
    nose = ((face["nose_tip_x"] - x) * scale, (face["nose_tip_y"] - y) * scale)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)

    panels = [
        # (title, caption, arrow points in the face's coordinates)
        ("+yaw", "turns to their left:\nthe nose moves right", arc(SIDE / 2, nose[1], 70, 22, 160, 15)),
        ("+pitch", "looks up:\nthe nose moves up", arc(nose[0] - 6, nose[1] - 10, 24, 62, 80, -75)),
        ("+roll", "tilts to their left shoulder:\nclockwise on the screen", arc(SIDE / 2, SIDE / 2, 88, 88, -155, -35)),
    ]
    width = len(panels) * SIDE + (len(panels) + 1) * PAD
    figure = Image.new("RGB", (width, TOP + SIDE + BOTTOM), "white")
    draw = ImageDraw.Draw(figure)
    for i, (title, caption, points) in enumerate(panels):
        left = PAD + i * (SIDE + PAD)
        figure.paste(crop, (left, TOP))
        for text, anchor, at in (("their right", "ld", left + 4), ("their left", "rd", left + SIDE - 4)):
            draw.text(
                (at, TOP + SIDE - 4), text, fill="white", font=small, anchor=anchor, stroke_width=2, stroke_fill="black"
            )
        arrow(draw, [(left + px, TOP + py) for px, py in points])
        draw.text((left + SIDE / 2, TOP / 2), title, fill="black", font=font, anchor="mm")
        draw.multiline_text(
            (left + SIDE / 2, TOP + SIDE + 6), caption, fill="black", font=small, anchor="ma", align="center"
        )
    figure.quantize(colors=128, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {figure.width}x{figure.height}, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
