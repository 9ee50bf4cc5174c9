"""Built-in out-of-distribution image sets, made from nothing but the in-distribution images (for
their size, levels, stroke width and layout) and the fonts matplotlib ships; nothing is downloaded.

Families (each ``(N, H, W)`` float32 in the data's levels 0..K-1):
- noise and pixel statistics: ``uniform-noise``, ``gaussian-noise`` (the data's mean and std),
  ``shuffled-pixels`` (each image's pixels permuted), ``inverted`` (K-1-x);
- inputs simpler than the data, where log p(x) fails (Nalisnick et al. 2019): ``blank`` (all zero),
  ``constant`` (one random level everywhere), ``dots`` (one to three lit pixels);
- look-alikes drawn like the data (strokes as thick as the data's, the glyph's box as large as the
  data's digits, centred by centre of mass, elastic distortion as in Simard et al. 2003):
  ``glyphs`` (letters of Latin, Greek, Cyrillic, Armenian, Georgian and Hebrew that do not resemble
  digits, DejaVu Sans), ``strokes`` (one to three random curves), ``fragments`` (a window of
  35-55% of a test image kept, the rest erased, recentred), ``blur`` (test images under a Gaussian
  blur of a tenth of the side, rescaled to their own peak).

``builtin_ood_sets`` draws those; the gate's weighted combination is fitted against them
(``training.calibration``). ``unseen_ood_sets`` draws look-alikes that no choice of the gate is
fitted on, for reports only: ``rotated`` (images turned a quarter, either way), ``overlaid`` (two
images, pixelwise maximum), ``chimeras`` (the top half of one image over the bottom half of another,
recentred) and ``scripts`` (glyphs, drawn as ``glyphs`` are, of scripts that family never uses:
Tifinagh, Canadian syllabics, Lao, N'Ko and Arabic).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SUPERSAMPLE = 4  # glyphs and strokes are drawn at 4x the resolution and averaged down
NON_DIGIT_CHARACTERS = (
    "ACEFHKMNPRUVWXYacdefhkmnprtuvwxy"  # Latin, without look-alikes of digits (O, I, S, Z, B, g, q, ...)
    "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθλμξπφψω"  # Greek
    "БГДЖИЛПФЦШЩЫЭЮЯжилпфцшщыэюя"  # Cyrillic
    "ԱԲԴԷԹԽԾՃՄՇՊՋՌՍՎՔաբդէժխծկհղճմյնշպջռվ"  # Armenian
    "აბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხჯჰ"  # Georgian
    "אבגדהוזחטכלמנסעפצקרשת"  # Hebrew
)
FURTHER_SCRIPTS = (  # in DejaVu Sans; without strokes and rings that pass for 1 or 0
    "ⴰⴱⴲⴳⴴⴵⴶⴷⴸⴹⴺⴻⴼⴽⴾⴿⵀⵁⵂⵃⵄⵅⵆⵇⵈⵉⵊⵋⵌⵍⵎⵐⵑⵒⵓⵕⵖⵗⵘⵚⵛⵜⵝⵞⵟⵠⵡⵢⵣⵤⵥ"  # Tifinagh
    "ᐁᐃᐅᐊᐯᐱᐳᐸᑌᑎᑐᑕᑫᑭᑯᑲᒉᒋᒍᒐᒣᒥᒧᒪᓀᓂᓄᓇᓓᓕᓗᓚᓭᓯᓱᓴᔦᔨᔪᔭ"  # Canadian syllabics
    "ກຂຄງຈຊຍດຕຖທນບປຜຝພຟມຢຣລວສຫອ"  # Lao
    "ߊߋߌߍߎߐߑߒߓߔߕߖߗߘߙߚߛߜߝߞߟߠߡߢߣߤߥߦߧ"  # N'Ko
    "بةتثجحخدذرزسشصضطظعغفقكلمنى"  # Arabic, isolated forms
)


def _layout(x: np.ndarray) -> dict[str, float]:
    """The data's look: the ink's bounding-box height as a share of the side, and the share of
    pixels above half the top level (stroke coverage)."""
    top = max(float(x.max()), 1.0)
    heights = []
    for image in x[:500]:
        rows = np.flatnonzero(image.max(axis=1) > 0.25 * top)
        heights.append((rows[-1] - rows[0] + 1) / image.shape[0] if rows.size else 0.0)
    return {"box": float(np.median(heights)), "ink": float(np.mean(x[:500] > 0.5 * top))}


def _glyph_mask(character: str, size: int) -> np.ndarray:
    """A filled glyph of DejaVu Sans Bold on a ``size`` x ``size`` boolean canvas (tight, unscaled)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    path = TextPath((0, 0), character, size=size * 0.7, prop=FontProperties(family="DejaVu Sans", weight="bold"))
    grid = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), axis=-1).reshape(-1, 2)
    extent = path.get_extents()
    offset = np.array([(size - extent.width) / 2 - extent.x0, (size - extent.height) / 2 - extent.y0])
    inside = path.contains_points(grid - offset).reshape(size, size)
    return inside[::-1]  # font y points up, image rows down


def _fit_to_box(mask: np.ndarray, side: int, box: float) -> np.ndarray:
    """Scale the ink of ``mask`` so its longer side is ``box`` of ``side`` (super-sampled pixels)
    and centre it by centre of mass on a ``side`` x ``side`` canvas."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros((side, side))
    crop = mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1].astype(np.float64)
    scale = box * side / max(crop.shape)
    scaled = np.clip(ndimage.zoom(crop, scale, order=1), 0, 1)[:side, :side]
    canvas = np.zeros((side, side))
    canvas[: scaled.shape[0], : scaled.shape[1]] = scaled
    return _recenter(canvas)


def _recenter(image: np.ndarray) -> np.ndarray:
    """Shift so the centre of mass sits in the middle (MNIST's normalisation)."""
    if image.sum() <= 0:
        return image
    center = np.array(ndimage.center_of_mass(image))
    return ndimage.shift(image, (np.array(image.shape) - 1) / 2 - center, order=1, mode="constant")


def _elastic(image: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """Simard et al.'s elastic distortion: a smoothed random displacement field of size ``alpha``."""
    shape = image.shape
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma) * alpha
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma) * alpha
    rows, columns = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return ndimage.map_coordinates(image, [rows + dy, columns + dx], order=1, mode="constant")


def _downsample(image: np.ndarray, levels: int) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks of a [0, 1] image and quantize to 0..levels-1."""
    h, w = image.shape[0] // SUPERSAMPLE, image.shape[1] // SUPERSAMPLE
    blocks = image[: h * SUPERSAMPLE, : w * SUPERSAMPLE].reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))
    return np.round(np.clip(blocks, 0, 1) * (levels - 1))


def _stroke_radius(layout: dict, levels: int, draw) -> int:
    """The dilation radius (super-sampled pixels) that makes ``draw(radius)`` images cover as many
    pixels as the data's strokes do."""
    coverage = {radius: np.mean([np.mean(_downsample(draw(radius), levels) > 0.5 * (levels - 1)) for _ in range(20)]) for radius in range(0, 7)}
    return min(coverage, key=lambda radius: abs(coverage[radius] - layout["ink"]))


def _disk(radius: int) -> np.ndarray:
    span = np.arange(-radius, radius + 1)
    return span[:, None] ** 2 + span[None, :] ** 2 <= radius**2


def _thicken(mask: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, _disk(radius)) if radius > 0 else mask


def glyph_images(count: int, x: np.ndarray, levels: int, rng: np.random.Generator, characters: str = NON_DIGIT_CHARACTERS) -> np.ndarray:
    side = x.shape[1] * SUPERSAMPLE
    layout = _layout(x)
    masks = {c: _glyph_mask(c, side) for c in characters}
    masks = {c: m for c, m in masks.items() if m.any()}

    def draw(radius: int, character: str | None = None) -> np.ndarray:
        character = character or rng.choice(list(masks))
        return _fit_to_box(_thicken(_thin(masks[character]), radius), side, layout["box"])

    radius = _stroke_radius(layout, levels, draw)
    images = [_elastic(draw(radius), rng, alpha=1.5 * SUPERSAMPLE, sigma=2.0 * SUPERSAMPLE) for _ in range(count)]
    return np.stack([_downsample(image, levels) for image in images]).astype(np.float32)


def _thin(mask: np.ndarray) -> np.ndarray:
    """Erode a bold glyph towards a pen line, so the stroke radius sets its width."""
    eroded = mask
    for _ in range(max(1, mask.shape[0] // 40)):
        step = ndimage.binary_erosion(eroded)
        if step.sum() < 0.3 * mask.sum():
            break
        eroded = step
    return eroded


def stroke_images(count: int, x: np.ndarray, levels: int, rng: np.random.Generator) -> np.ndarray:
    side = x.shape[1] * SUPERSAMPLE
    layout = _layout(x)

    def draw(radius: int) -> np.ndarray:
        mask = np.zeros((side, side), dtype=bool)
        for _ in range(rng.integers(1, 4)):
            control = rng.uniform(0.15, 0.85, size=(3, 2)) * side
            t = np.linspace(0, 1, 4 * side)[:, None]
            curve = (1 - t) ** 2 * control[0] + 2 * t * (1 - t) * control[1] + t**2 * control[2]
            points = np.clip(np.round(curve).astype(int), 0, side - 1)
            mask[points[:, 0], points[:, 1]] = True
        return _fit_to_box(_thicken(mask, radius), side, layout["box"] * rng.uniform(0.6, 1.0))

    radius = _stroke_radius(layout, levels, draw)
    return np.stack([_downsample(draw(radius), levels) for _ in range(count)]).astype(np.float32)


def fragment_images(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = x.shape[1:]
    fragments = []
    for image in x:
        area = rng.uniform(0.35, 0.55)
        h = int(np.clip(round(height * np.sqrt(area) * rng.uniform(0.8, 1.25)), 2, height))
        w = int(np.clip(round(height * width * area / h), 2, width))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        kept = np.zeros_like(image)
        kept[top : top + h, left : left + w] = image[top : top + h, left : left + w]
        fragments.append(np.round(_recenter(kept)))
    return np.stack(fragments).astype(np.float32)


def blur_images(x: np.ndarray) -> np.ndarray:
    blurred = np.stack([ndimage.gaussian_filter(image.astype(np.float64), sigma=image.shape[0] / 10) for image in x])
    peak = blurred.reshape(len(x), -1).max(axis=1).clip(min=1e-9)
    own_peak = x.reshape(len(x), -1).max(axis=1)
    return np.round(blurred * (own_peak / peak)[:, None, None]).astype(np.float32)


def chimera_images(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The top half of each image over the bottom half of another (a random pairing), recentred."""
    middle = x.shape[1] // 2
    partners = x[rng.permutation(len(x))]
    stacked = np.concatenate([x[:, :middle], partners[:, middle:]], axis=1)
    return np.stack([np.round(_recenter(image.astype(np.float64))) for image in stacked]).astype(np.float32)


UNSEEN_FAMILIES = ("rotated", "overlaid", "chimeras", "scripts")


def unseen_ood_sets(x: np.ndarray, levels: int, seed: int = 0, count: int | None = None) -> dict[str, np.ndarray]:
    """Look-alike families no choice of the gate is fitted on, for in-distribution images ``x``
    ``(N, H, W)`` in 0..levels-1: ``scripts`` has ``count`` members (default min(N, 1000)), the
    others one per image."""
    rng = np.random.default_rng(seed)
    count = count or min(len(x), 1000)
    turns = np.where(rng.random(len(x)) < 0.5, 1, 3)
    return {
        "rotated": np.stack([np.rot90(image, turn) for image, turn in zip(x, turns)]).astype(np.float32),
        "overlaid": np.maximum(x, x[rng.permutation(len(x))]).astype(np.float32),
        "chimeras": chimera_images(x, rng),
        "scripts": glyph_images(count, x, levels, rng, FURTHER_SCRIPTS),
    }


def builtin_ood_sets(x: np.ndarray, levels: int, seed: int = 0, count: int | None = None) -> dict[str, np.ndarray]:
    """Every built-in family for in-distribution images ``x`` ``(N, H, W)`` in 0..levels-1; the
    sets of made-up images have ``count`` members (default min(N, 1000)), the ones derived from
    ``x`` one per image."""
    rng = np.random.default_rng(seed)
    count = count or min(len(x), 1000)
    top = levels - 1
    shape = (count, *x.shape[1:])
    flat = x.reshape(len(x), -1)
    dots = np.zeros(shape, dtype=np.float32)
    for image in dots.reshape(count, -1):
        image[rng.choice(image.size, size=rng.integers(1, 4), replace=False)] = rng.integers(top // 2, levels, size=1)
    return {
        "uniform-noise": rng.integers(0, levels, size=x.shape).astype(np.float32),
        "gaussian-noise": np.clip(np.round(rng.normal(x.mean(), x.std(), size=x.shape)), 0, top).astype(np.float32),
        "shuffled-pixels": np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(x.shape).astype(np.float32),
        "inverted": (top - x).astype(np.float32),
        "blank": np.zeros(shape, dtype=np.float32),
        "constant": np.broadcast_to(rng.integers(1, levels, size=count)[:, None, None], shape).astype(np.float32),
        "dots": dots,
        "glyphs": glyph_images(count, x, levels, rng),
        "strokes": stroke_images(count, x, levels, rng),
        "fragments": fragment_images(x, rng),
        "blur": blur_images(x),
    }
