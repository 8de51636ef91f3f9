"""Offline datasets: sklearn digits (8x8, 17 levels), skimage lfw_subset faces (24x24, 256 levels),
natural RGB 8x8 patches (256 levels) with train/test cut from DIFFERENT bundled photos; plus a user
folder of images or an ``.npz``. Deterministic splits. Arrays are int64 (N, C, H, W) in 0..levels-1.

Ref: shared/docs/pixelcnn.md §4 (data shipped inside installed packages; no download at run time).
"""
import os
from dataclasses import dataclass, field

import numpy as np

PATCH_TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "china")
PATCH_TEST = ("flower",)


@dataclass
class Dataset:
    name: str
    train: np.ndarray
    test: np.ndarray
    levels: int
    extra: dict = field(default_factory=dict)  # further named test sets
    train_photos: np.ndarray = None  # source photo of each training image, where known (patches)

    @property
    def shape(self):
        return self.train.shape[1:]


def _split(x, n_test, seed=0):
    perm = np.random.RandomState(seed).permutation(len(x))
    return x[perm[n_test:]], x[perm[:n_test]]


def digits():
    from sklearn.datasets import load_digits
    x = load_digits().images.astype(np.int64).reshape(-1, 1, 8, 8)
    tr, te = _split(x, 297)
    return Dataset("digits", tr, te, 17)


def faces():
    """The 100 face images of skimage's lfw_subset (the first 100), centre-cropped 25->24, 256 levels.
    80 train / 20 test; the train set is doubled with left-right flips."""
    from skimage.data import lfw_subset
    x = lfw_subset()[:100, :24, :24]
    x = np.clip(np.floor(x * 256), 0, 255).astype(np.int64)[:, None]
    tr, te = _split(x, 20)
    return Dataset("faces", np.concatenate([tr, tr[..., ::-1]]), te, 256)


def _photo(name):
    import skimage.data
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return load_sample_image(name + ".jpg")
    return getattr(skimage.data, name)()


def _patches(names, n, size, seed, rows=(0.0, 1.0)):
    rng = np.random.RandomState(seed)
    imgs = [_photo(nm) for nm in names]
    imgs = [im[int(rows[0] * im.shape[0]):int(rows[1] * im.shape[0])] for im in imgs]
    out = np.empty((n, 3, size, size), np.int64)
    for t in range(n):
        im = imgs[t % len(imgs)]
        i = rng.randint(im.shape[0] - size + 1)
        j = rng.randint(im.shape[1] - size + 1)
        out[t] = im[i:i + size, j:j + size, :3].transpose(2, 0, 1)
    return out


def patches(n_train=12000, n_test=1000, size=8):
    """Natural RGB patches: train from the top 80 % of the rows of astronaut, chelsea, coffee, rocket
    (skimage) and china (sklearn); test from flower (sklearn) only, so train and test never share a
    source photo. ``extra['same_photos']``: an in-distribution check set from the bottom 20 % of the
    training photos (disjoint pixels); ``train_photos``: each training patch's photo (patch t is from
    photo t mod 5)."""
    return Dataset("patches", _patches(PATCH_TRAIN, n_train, size, 0, (0.0, 0.8)),
                   _patches(PATCH_TEST, n_test, size, 1), 256,
                   {"same_photos": _patches(PATCH_TRAIN, n_test, size, 2, (0.8, 1.0))},
                   np.array(PATCH_TRAIN)[np.arange(n_train) % len(PATCH_TRAIN)])


def hold_out_photo(ds, photo):
    """(training images of every other photo, training images of ``photo``): a validation split cut from
    the training photos that tests generalisation to an unseen photo without touching the test photo."""
    if ds.train_photos is None:
        raise ValueError(f"dataset {ds.name!r} does not record the source photo of its training images "
                         f"(only 'patches' does); cannot hold out {photo!r}")
    sel = ds.train_photos == photo
    if not sel.any():
        raise ValueError(f"no training image of dataset {ds.name!r} comes from photo {photo!r}; "
                         f"photos: {sorted(set(ds.train_photos))}")
    return ds.train[~sel], ds.train[sel]


def downscale(im, f):
    """(H, W, C) uint8 photo -> f x f block means rounded half up, int64 (H // f, W // f, C)."""
    im = np.asarray(im, np.int64)
    if f == 1:
        return im
    h, w = im.shape[0] // f * f, im.shape[1] // f * f
    s = im[:h, :w].reshape(h // f, f, w // f, f, -1).sum((1, 3))
    return (2 * s + f * f) // (2 * f * f)


class PhotoCrops:
    """Random ``size`` x ``size`` RGB crops (256 levels) of bundled photos at several scales (block-mean
    downscales by ``scales``), each crop left-right flipped with probability 1/2: an endless training
    stream (``batch``) or a fixed set (``fixed``). An (image, scale) pair is picked uniformly, then a
    position uniformly; ``rows`` keeps a band of each photo's rows (before scaling), so train and
    check sets can come from disjoint pixels; scales the band is too small for are left out."""

    def __init__(self, names, size, scales=(1, 2, 4), rows=(0.0, 1.0)):
        self.size = size
        self.images = []
        for nm in names:
            im = _photo(nm)[..., :3]
            im = im[int(rows[0] * im.shape[0]):int(rows[1] * im.shape[0])]
            for f in scales:
                d = downscale(im, f)
                if min(d.shape[:2]) >= size:
                    self.images.append(d.transpose(2, 0, 1))
        if not self.images:
            raise ValueError(f"no photo of {names} at scales {scales} is at least {size}x{size}")

    def batch(self, n, rng):
        s = self.size
        out = np.empty((n, 3, s, s), np.int64)
        which = rng.randint(len(self.images), size=n)
        flips = rng.rand(n) < 0.5
        for t in range(n):
            im = self.images[which[t]]
            i, j = rng.randint(im.shape[1] - s + 1), rng.randint(im.shape[2] - s + 1)
            c = im[:, i:i + s, j:j + s]
            out[t] = c[:, :, ::-1] if flips[t] else c
        return out

    def fixed(self, n, seed):
        return self.batch(n, np.random.RandomState(seed))


def photo_crops(size, n_test=1000, scales=(1, 2, 4)):
    """(train stream, held-out-photo test crops, same-photo check crops): train from the top 80 % of the
    rows of the ``PATCH_TRAIN`` photos, test from ``PATCH_TEST`` (never seen in training), check crops
    from the bottom 20 % of the training photos."""
    return (PhotoCrops(PATCH_TRAIN, size, scales, (0.0, 0.8)),
            PhotoCrops(PATCH_TEST, size, scales).fixed(n_test, 1),
            PhotoCrops(PATCH_TRAIN, size, scales, (0.8, 1.0)).fixed(n_test, 2))


def _check(x, what):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected images shaped (N,H,W), (N,1|3,H,W) or (N,H,W,1|3), got {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{what}: float images must lie in [0, 1]")
        x = np.clip(np.floor(x * 256), 0, 255)
    return x.astype(np.int64)


def from_path(path, n_test=None):
    """A folder of images (all the same size; PNG/JPG/...; split 90/10 deterministically) or an ``.npz``
    holding ``train`` and ``test`` arrays (or a single ``x`` array) and optionally ``levels``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset path {path!r} does not exist")
    if os.path.isdir(path):
        from skimage.io import imread
        files = sorted(f for f in os.listdir(path)
                       if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")))
        if not files:
            raise ValueError(f"no image files in folder {path!r}")
        ims = [imread(os.path.join(path, f)) for f in files]
        shapes = {im.shape for im in ims}
        if len(shapes) != 1:
            raise ValueError(f"images in {path!r} have different shapes: {sorted(shapes)}")
        x = _check(np.stack(ims), path)
        tr, te = _split(x, n_test or max(1, len(x) // 10))
        levels = 256
    elif path.endswith(".npz"):
        z = np.load(path)
        if "train" in z and "test" in z:
            tr, te = _check(z["train"], path + ":train"), _check(z["test"], path + ":test")
        elif "x" in z:
            x = _check(z["x"], path + ":x")
            tr, te = _split(x, n_test or max(1, len(x) // 10))
        else:
            raise ValueError(f"{path!r}: .npz needs arrays 'train' and 'test', or 'x'; has {list(z.keys())}")
        if tr.shape[1:] != te.shape[1:]:
            raise ValueError(f"{path!r}: train shape {tr.shape[1:]} != test shape {te.shape[1:]}")
        levels = int(z["levels"]) if "levels" in z else int(max(tr.max(), te.max())) + 1
    else:
        raise ValueError(f"{path!r}: expected a folder of images or an .npz file")
    if min(tr.min(), te.min()) < 0 or max(tr.max(), te.max()) >= levels:
        raise ValueError(f"{path!r}: pixel values must lie in 0..{levels - 1}")
    return Dataset(os.path.basename(path.rstrip("/")), tr, te, levels)


DATASETS = {"digits": digits, "faces": faces, "patches": patches}


def load(name):
    """Built-in name (digits, faces, patches) or a path (folder / .npz)."""
    if name in DATASETS:
        return DATASETS[name]()
    if os.sep in name or name.endswith(".npz") or os.path.exists(name):
        return from_path(name)
    raise ValueError(f"unknown dataset {name!r}; expected {', '.join(DATASETS)} or a folder / .npz path")
