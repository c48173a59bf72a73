"""National flags drawn from geometric descriptions (stripes, crosses, discs, triangles).

A flag is a list of shapes on a 3:2 field with coordinates in fractions of width (x) and
height (y). Drawings are simplified (no coats of arms or lettering) but keep each flag's
layout and colours, so every flag here is distinguishable from every other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from PIL import Image, ImageDraw

COLORS = {
    "red": (206, 17, 38),
    "white": (255, 255, 255),
    "blue": (0, 56, 168),
    "green": (0, 135, 81),
    "yellow": (252, 209, 22),
    "black": (0, 0, 0),
    "orange": (255, 130, 0),
    "sky": (65, 143, 222),
    "navy": (0, 33, 71),
    "maroon": (138, 21, 56),
    "gold": (255, 204, 0),
    "aqua": (0, 171, 201),
    "lightblue": (110, 180, 235),
}

Shape = tuple


def h(*colors: str, weights: tuple[float, ...] | None = None) -> Shape:
    return ("hstripes", colors, weights)


def v(*colors: str, weights: tuple[float, ...] | None = None) -> Shape:
    return ("vstripes", colors, weights)


def rect(color: str, x0: float, y0: float, x1: float, y1: float) -> Shape:
    return ("poly", color, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def poly(color: str, *points: tuple[float, float]) -> Shape:
    return ("poly", color, list(points))


def disc(color: str, cx: float, cy: float, r: float) -> Shape:
    """A disc of radius ``r`` (fraction of the height)."""
    return ("disc", color, cx, cy, r)


def star(color: str, cx: float, cy: float, r: float) -> Shape:
    return ("star", color, cx, cy, r)


def cross(color: str, cx: float, width: float) -> Shape:
    """A Nordic/centred cross: vertical bar at ``cx``, horizontal bar at mid-height."""
    return ("cross", color, cx, width)


FLAGS: dict[str, list[Shape]] = {
    # Europe
    "Germany": [h("black", "red", "gold")],
    "Netherlands": [h("red", "white", "blue")],
    "Russia": [h("white", "blue", "red")],
    "Austria": [h("red", "white", "red")],
    "Hungary": [h("red", "white", "green")],
    "Bulgaria": [h("white", "green", "red")],
    "Lithuania": [h("yellow", "green", "red")],
    "Estonia": [h("sky", "black", "white")],
    "France": [v("blue", "white", "red")],
    "Italy": [v("green", "white", "red")],
    "Ireland": [v("green", "white", "orange")],
    "Belgium": [v("black", "yellow", "red")],
    "Romania": [v("blue", "yellow", "red")],
    "Denmark": [h("red"), cross("white", 0.37, 0.14)],
    "Sweden": [h("blue"), cross("yellow", 0.37, 0.2)],
    "Norway": [h("red"), cross("white", 0.37, 0.25), cross("navy", 0.37, 0.12)],
    "Finland": [h("white"), cross("blue", 0.37, 0.27)],
    "Iceland": [h("blue"), cross("white", 0.37, 0.25), cross("red", 0.37, 0.12)],
    "Czechia": [h("white", "red"), poly("blue", (0, 0), (0.5, 0.5), (0, 1))],
    "Poland": [h("white", "red")],
    "Ukraine": [h("blue", "yellow")],
    "Switzerland": [h("red"), rect("white", 0.43, 0.2, 0.57, 0.8), rect("white", 0.3, 0.4, 0.7, 0.6)],
    "Greece": [
        h(*(["blue", "white"] * 4 + ["blue"])),
        rect("blue", 0, 0, 0.37, 0.556),
        rect("white", 0.15, 0, 0.22, 0.556),
        rect("white", 0, 0.22, 0.37, 0.33),
    ],
    "Spain": [h("red", "yellow", "red", weights=(1, 2, 1))],
    "Portugal": [v("green", "red", weights=(2, 3)), disc("yellow", 0.4, 0.5, 0.2)],
    # Asia
    "Japan": [h("white"), disc("red", 0.5, 0.5, 0.3)],
    "Bangladesh": [h("green"), disc("red", 0.45, 0.5, 0.3)],
    "Laos": [h("red", "blue", "red", weights=(1, 2, 1)), disc("white", 0.5, 0.5, 0.2)],
    "Vietnam": [h("red"), star("yellow", 0.5, 0.5, 0.3)],
    "China": [
        h("red"),
        star("yellow", 0.17, 0.25, 0.15),
        star("yellow", 0.33, 0.1, 0.05),
        star("yellow", 0.4, 0.2, 0.05),
        star("yellow", 0.4, 0.35, 0.05),
    ],
    "Thailand": [h("red", "white", "navy", "white", "red", weights=(1, 1, 2, 1, 1))],
    "Indonesia": [h("red", "white")],
    "Armenia": [h("red", "blue", "orange")],
    "Turkey": [h("red"), ("crescent", "white", "red", 0.35, 0.5, 0.25), star("white", 0.5, 0.5, 0.1)],
    "SouthKorea": [h("white"), ("split_disc", "red", "blue", 0.5, 0.5, 0.25)],
    "Pakistan": [v("white", "green", weights=(1, 3)), ("crescent", "white", "green", 0.62, 0.5, 0.27)],
    "Qatar": [h("maroon"), rect("white", 0, 0, 0.3, 1)]
    + [poly("white", (0.3, i / 9), (0.38, (i + 0.5) / 9), (0.3, (i + 1) / 9)) for i in range(9)],
    "Mongolia": [v("red", "blue", "red"), rect("gold", 0.12, 0.25, 0.2, 0.8)],
    # Africa
    "Nigeria": [v("green", "white", "green")],
    "Guinea": [v("red", "yellow", "green")],
    "IvoryCoast": [v("orange", "white", "green")],
    "SierraLeone": [h("green", "white", "blue")],
    "Gabon": [h("green", "yellow", "blue")],
    "Cameroon": [v("green", "red", "yellow"), star("yellow", 0.5, 0.5, 0.15)],
    "Senegal": [v("green", "yellow", "red"), star("green", 0.5, 0.5, 0.15)],
    "Ghana": [h("red", "yellow", "green"), star("black", 0.5, 0.5, 0.17)],
    "Somalia": [h("lightblue"), star("white", 0.5, 0.5, 0.25)],
    "Botswana": [h("lightblue", "white", "black", "white", "lightblue", weights=(9, 1, 4, 1, 9))],
    "Gambia": [h("red", "white", "blue", "white", "green", weights=(6, 1, 4, 1, 6))],
    "Egypt": [h("red", "white", "black"), disc("gold", 0.5, 0.5, 0.12)],
    "Morocco": [h("red"), star("green", 0.5, 0.5, 0.27)],
    "Tunisia": [h("red"), disc("white", 0.5, 0.5, 0.3), ("crescent", "red", "white", 0.5, 0.5, 0.2)],
    "Niger": [h("orange", "white", "green"), disc("orange", 0.5, 0.5, 0.12)],
    "Madagascar": [h("red", "green"), rect("white", 0, 0, 0.33, 1)],
    "Libya": [h("red", "black", "green", weights=(1, 2, 1)), ("crescent", "white", "black", 0.47, 0.5, 0.18)],
    "Tanzania": [
        h("blue"),
        poly("green", (0, 0), (1, 0), (0, 1)),
        poly("yellow", (0.75, 0), (1, 0), (1, 0.17), (0.25, 1), (0, 1), (0, 0.83)),
        poly("black", (0.85, 0), (1, 0), (1, 0.1), (0.15, 1), (0, 1), (0, 0.9)),
    ],
    # Americas
    "Colombia": [h("yellow", "blue", "red", weights=(2, 1, 1))],
    "Bolivia": [h("red", "yellow", "green")],
    "Peru": [v("red", "white", "red")],
    "Canada": [v("red", "white", "red", weights=(1, 2, 1)), star("red", 0.5, 0.5, 0.22)],
    "Chile": [h("white", "red"), rect("blue", 0, 0, 0.33, 0.5), star("white", 0.167, 0.25, 0.13)],
    "Cuba": [
        h("blue", "white", "blue", "white", "blue"),
        poly("red", (0, 0), (0.43, 0.5), (0, 1)),
        star("white", 0.14, 0.5, 0.12),
    ],
    "Brazil": [
        h("green"),
        poly("yellow", (0.08, 0.5), (0.5, 0.1), (0.92, 0.5), (0.5, 0.9)),
        disc("navy", 0.5, 0.5, 0.22),
    ],
    "Jamaica": [
        h("green"),
        poly("black", (0, 0), (0.5, 0.5), (0, 1)),
        poly("black", (1, 0), (0.5, 0.5), (1, 1)),
        ("saltire", "gold", 0.12),
    ],
    "Bahamas": [h("aqua", "gold", "aqua"), poly("black", (0, 0), (0.43, 0.5), (0, 1))],
    "Honduras": [h("blue", "white", "blue")]
    + [star("blue", x, y, 0.06) for x, y in [(0.5, 0.5), (0.4, 0.42), (0.6, 0.42), (0.4, 0.58), (0.6, 0.58)]],
    "Uruguay": [
        h(*(["white", "blue"] * 4 + ["white"])),
        rect("white", 0, 0, 0.33, 0.556),
        disc("gold", 0.167, 0.278, 0.17),
    ],
    "USA": [h(*(["red", "white"] * 6 + ["red"])), rect("navy", 0, 0, 0.4, 0.54)],
    "Suriname": [h("green", "white", "red", "white", "green", weights=(2, 1, 4, 1, 2)), star("yellow", 0.5, 0.5, 0.17)],
    # Oceania
    "Palau": [h("lightblue"), disc("gold", 0.45, 0.5, 0.3)],
    "Nauru": [h("navy"), rect("gold", 0, 0.46, 1, 0.54), star("white", 0.25, 0.72, 0.12)],
    "Tonga": [
        h("red"),
        rect("white", 0, 0, 0.42, 0.5),
        rect("red", 0.17, 0.06, 0.25, 0.44),
        rect("red", 0.06, 0.22, 0.36, 0.3),
    ],
    "Samoa": [h("red"), rect("navy", 0, 0, 0.5, 0.5), star("white", 0.25, 0.25, 0.1)],
    "Fiji": [
        h("lightblue"),
        rect("navy", 0, 0, 0.5, 0.5),
        rect("red", 0.22, 0, 0.28, 0.5),
        rect("red", 0, 0.22, 0.5, 0.28),
        rect("white", 0.65, 0.3, 0.82, 0.65),
    ],
}


def _star_points(cx: float, cy: float, r_out: float, r_in: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5
        r = r_out if i % 2 == 0 else r_in
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_flag(name: str, width: int, height: int, colors: Mapping[str, tuple[int, ...]] | None = None) -> Image.Image:
    """Render ``name``'s flag at ``width`` x ``height`` pixels (``colors`` may jitter the palette)."""
    palette = colors or COLORS
    image = Image.new("RGB", (width, height), palette["white"])
    draw = ImageDraw.Draw(image)

    def px(x: float, y: float) -> tuple[float, float]:
        return x * width, y * height

    for shape in FLAGS[name]:
        kind = shape[0]
        if kind in ("hstripes", "vstripes"):
            _, names, weights = shape
            weights = weights or (1,) * len(names)
            total, start = float(sum(weights)), 0.0
            for color, weight in zip(names, weights, strict=True):
                end = start + weight / total
                box = (0, start, 1, end) if kind == "hstripes" else (start, 0, end, 1)
                draw.rectangle([px(box[0], box[1]), px(box[2], box[3])], fill=palette[color])
                start = end
        elif kind == "poly":
            draw.polygon([px(x, y) for x, y in shape[2]], fill=palette[shape[1]])
        elif kind == "disc":
            _, color, cx, cy, r = shape
            x, y, rr = cx * width, cy * height, r * height
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=palette[color])
        elif kind == "split_disc":
            _, top, bottom, cx, cy, r = shape
            x, y, rr = cx * width, cy * height, r * height
            draw.pieslice([x - rr, y - rr, x + rr, y + rr], 180, 360, fill=palette[top])
            draw.pieslice([x - rr, y - rr, x + rr, y + rr], 0, 180, fill=palette[bottom])
        elif kind == "crescent":
            _, color, background, cx, cy, r = shape
            x, y, rr = cx * width, cy * height, r * height
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=palette[color])
            x2, r2 = x + 0.3 * rr, 0.82 * rr
            draw.ellipse([x2 - r2, y - r2, x2 + r2, y + r2], fill=palette[background])
        elif kind == "star":
            _, color, cx, cy, r = shape
            points = _star_points(cx * width, cy * height, r * height, 0.4 * r * height)
            draw.polygon(points, fill=palette[color])
        elif kind == "cross":
            _, color, cx, w = shape
            half = w * height / 2
            draw.rectangle([cx * width - half, 0, cx * width + half, height], fill=palette[color])
            draw.rectangle([0, height / 2 - half, width, height / 2 + half], fill=palette[color])
        elif kind == "saltire":
            _, color, w = shape
            t = w * height
            draw.line([(0, 0), (width, height)], fill=palette[color], width=int(round(t)))
            draw.line([(0, height), (width, 0)], fill=palette[color], width=int(round(t)))
        else:
            raise ValueError(f"unknown shape {kind!r} in the flag of {name}")
    return image
