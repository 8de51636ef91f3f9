"""Two numbers that say whether sampled images look like the data, in NumPy only (the host computes them
without importing torch): how far apart neighbouring pixels are, and how much the colour varies inside
an image. Photo patches are smooth and nearly one hue; an under-trained 256-level model's samples are
pixel noise in both.
"""
import numpy as np


def image_stats(images):
    """(N, C, H, W) integer images -> ``neighbour_abs_diff_levels``: mean |x[i, j] - x[i, j + 1]| and
    |x[i, j] - x[i + 1, j]| over channels and neighbour pairs, in levels; for RGB also
    ``chroma_std_levels``: the mean over images of the standard deviation over pixels of R - G and of
    B - G (a patch of one hue: 0); ``images``: N."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"image_stats expects a non-empty (N, C, H, W) array, got shape {x.shape}")
    dh = np.abs(np.diff(x, axis=3)).mean(axis=(1, 2, 3))
    dv = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    out = {"images": int(len(x)), "neighbour_abs_diff_levels": float(((dh + dv) / 2).mean())}
    if x.shape[1] == 3:
        rg, bg = x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]
        out["chroma_std_levels"] = float(((rg.std(axis=(1, 2)) + bg.std(axis=(1, 2))) / 2).mean())
    return out


def data_stats(ds, n=1000):
    """``image_stats`` of a dataset's first ``n`` test images and, where it has them, training images (the
    images a model's samples should resemble)."""
    out = {"test_images": image_stats(ds.test[:n])}
    if ds.train is not None and len(ds.train):
        out["train_images"] = image_stats(ds.train[:n])
    return out


def main(argv=None):
    """Sample each checkpoint with the float cached sampler and print its ``image_stats`` beside the data's."""
    import argparse
    import json
    p = argparse.ArgumentParser(description="Do a model's samples look like its data? Neighbour |difference| "
                                            "and colour spread of float samples, next to the training and test images.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="trained pixelcnn / gray / pyramid checkpoints (.pt)")
    p.add_argument("-n", "--samples", type=int, default=64, help="samples per checkpoint")
    p.add_argument("--seed", type=int, default=1, help="sampling seed")
    p.add_argument("--colourise", action="store_true",
                   help="Grayscale checkpoints: also colour the gray views of the first --samples test images "
                        "(the colour stage alone, beside those images' own statistics)")
    p.add_argument("--json", default=None, help="write the statistics here")
    a = p.parse_args(argv)
    if a.samples < 1:
        p.error("--samples must be at least 1")
    import torch
    from . import data, sample
    from .train import load_checkpoint
    torch.set_num_threads(1)
    out, datasets = {}, {}
    for ck_path in a.checkpoints:
        model, ck = load_checkpoint(ck_path)
        name = ck["meta"]["dataset"]
        if name not in datasets:
            datasets[name] = data.load(name)
            out.update({f"{name}:{k}": v for k, v in data_stats(datasets[name]).items()})
        with torch.no_grad():
            x = sample.sample_model(model.eval(), a.samples, datasets[name].shape, seed=a.seed)
        out[ck_path] = dict(image_stats(np.asarray(x)), epochs=ck["epoch"])
        if a.colourise and hasattr(model, "colour"):
            real = datasets[name].test[:a.samples]
            out[f"{name}:test_images[:{len(real)}]"] = image_stats(real)
            with torch.no_grad():
                xt = torch.from_numpy(real)
                c = sample.colourise(model, model.aux(xt), sample.uniform_stream(len(real), real.shape[1:], a.seed))
            out[f"{ck_path}:colourised_test"] = image_stats(np.asarray(c))
    for k, v in out.items():
        print(f"{k:60s} " + "  ".join(f"{m} {v[m]:.2f}" for m in ("neighbour_abs_diff_levels", "chroma_std_levels")
                                        if m in v))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
