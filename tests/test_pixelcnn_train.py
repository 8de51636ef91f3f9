"""1-step training smoke test of every model; resumable checkpoints; the CLI."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.pixelcnn import data, train
from models.pixelcnn.models import MODEL_NAMES

TINY = {
    "pixelcnn": dict(hidden=6, n_layers=2),
    "gray": dict(hidden=6, n_layers=2, cond_hidden=4),
    "pyramid": dict(hidden=6, coarse_layers=2, fine_layers=1, cond_hidden=4),
    "stream": dict(hidden=4, n_res=1, head=4),
}


def tiny(channels, levels=5, n=12, size=4):
    rng = np.random.RandomState(0)
    return data.Dataset("tiny", rng.randint(0, levels, (n, channels, size, size)),
                        rng.randint(0, levels, (4, channels, size, size)), levels)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_one_step(name, channels):
    if name == "stream" and channels == 3:
        pytest.skip("the streaming export model is single-channel")
    model, res = train.train(name, tiny(channels), epochs=1, batch_size=4, arch=TINY[name], max_steps=1,
                             progress=False, log=lambda s: None)
    assert np.isfinite(res["test_bits_per_dim"]) and res["test_bits_per_dim"] > 0
    assert abs(sum(res["test_parts_bits_per_dim"].values()) - res["test_bits_per_dim"]) < 1e-9
    if name == "gray":
        assert set(res["test_parts_bits_per_dim"]) == {"gray", "colour"}
    if name == "pyramid":
        assert set(res["test_parts_bits_per_dim"]) == {"level0", "level1"}


def test_resume(tmp_path):
    ck = str(tmp_path / "m.pt")
    ds = tiny(1)
    logs = []
    train.train("pixelcnn", ds, epochs=1, batch_size=4, arch=TINY["pixelcnn"], out=ck, progress=False,
                log=logs.append)
    m1, _ = train.load_checkpoint(ck)
    _, res = train.train("pixelcnn", ds, epochs=2, batch_size=4, arch=TINY["pixelcnn"], out=ck, resume=True,
                         progress=False, log=logs.append)
    assert any("resumed" in s and "epoch 1" in s for s in logs)
    assert torch.load(ck, weights_only=False)["epoch"] == 2
    with pytest.raises(FileNotFoundError):
        train.load_checkpoint(str(tmp_path / "missing.pt"))


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "models.pixelcnn.train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--model" in out and "(default: pixelcnn)" in out.replace("\n", " ").replace("  ", " ") and "--resume" in out


def test_cpu_results_unchanged():
    """--device cpu reproduces the numbers of the code before device support (measured on it, float32,
    two epochs on a fixed tiny RGB set)."""
    rng = np.random.RandomState(0)
    ds = data.Dataset("tiny", rng.randint(0, 5, (12, 3, 4, 4)), rng.randint(0, 5, (4, 3, 4, 4)), 5)
    for name, arch, want in [("pixelcnn", dict(hidden=6, n_layers=2), 2.308045585950216),
                             ("pyramid", dict(hidden=6, coarse_layers=2, fine_layers=1, cond_hidden=4,
                                              logit_prior=2), 4.315625538428624)]:
        _, res = train.train(name, ds, epochs=2, batch_size=4, arch=arch, progress=False, log=lambda s: None,
                             device="cpu")
        assert res["test_bits_per_dim"] == want and res["device"] == "cpu"


def test_device_choice():
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        train.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            train.resolve_device("cuda")


def test_checkpoint_device_and_legacy(tmp_path):
    """Checkpoints hold CPU tensors and load onto the requested device; committed checkpoints written
    before the exact-mask / dilated-conditioning options load with their original architecture."""
    ck = str(tmp_path / "g.pt")
    ds = tiny(3)
    m, _ = train.train("gray", ds, epochs=1, batch_size=4, arch=TINY["gray"], out=ck, progress=False,
                       log=lambda s: None, device="auto")
    assert all(v.device.type == "cpu" for v in torch.load(ck, weights_only=False)["model"].values())
    m2, meta = train.load_checkpoint(ck, device="auto")
    assert meta["meta"]["version"] == train.CHECKPOINT_VERSION and m2.exact
    x = torch.from_numpy(ds.test).to(next(m2.parameters()).device)
    assert torch.allclose(m.eval().bpd(x), m2.eval().bpd(x))
    old, _ = train.load_checkpoint("models/pixelcnn/weights/bench_gray_digits.pt")
    assert not old.exact and old.cond_net.receptive_field == 7


def test_warm_start(tmp_path):
    """--warm-start copies a trained baseline into the gray model's colour network before training (the
    checkpoint records it); it is refused for other models."""
    ds = tiny(3, levels=16)
    base = str(tmp_path / "base.pt")
    train.train("pixelcnn", ds, epochs=1, batch_size=4, arch=TINY["pixelcnn"], out=base, progress=False,
                log=lambda s: None)
    bm, _ = train.load_checkpoint(base)
    arch = dict(TINY["gray"], gray_levels=4)
    m, res = train.train("gray", ds, epochs=1, batch_size=4, lr=0.0, arch=arch, out=str(tmp_path / "g.pt"),
                         progress=False, log=lambda s: None, warm_start=base)
    assert res["warm_start"]["checkpoint"] == "base.pt"
    x = torch.from_numpy(ds.test)
    with torch.no_grad():                    # lr 0: still the baseline, with zero conditioning inputs
        assert torch.allclose(m.colour(x, m.condition(m.aux(x))), bm(x), atol=1e-6)
    m2, res2 = train.train("gray", ds, epochs=1, batch_size=4, lr=0.0, arch=arch, progress=False,
                           log=lambda s: None, warm_start=bm)        # a model in memory (bench --quick)
    assert res2["warm_start"]["checkpoint"] is None
    assert res2["test_bits_per_dim"] == res["test_bits_per_dim"]
    with pytest.raises(ValueError, match="gray model only"):
        train.train("pyramid", ds, epochs=1, batch_size=4, arch=TINY["pyramid"], progress=False,
                    log=lambda s: None, warm_start=base)


def test_prior_from_and_early_stopping(tmp_path):
    """--prior-from copies a Grayscale model's gray prior and keeps it frozen; --val-photo trains without
    that photo's images, validates from step 0, and returns (and saves) the model of the best step."""
    rng = np.random.RandomState(1)
    photos = np.array(["a", "b"] * 8)
    ds = data.Dataset("tiny", rng.randint(0, 16, (16, 3, 4, 4)), rng.randint(0, 16, (4, 3, 4, 4)), 16,
                      train_photos=photos)
    arch = dict(TINY["gray"], gray_levels=4)
    src = str(tmp_path / "src.pt")
    sm, _ = train.train("gray", ds, epochs=1, batch_size=4, arch=arch, out=src, progress=False, log=lambda s: None)
    ck = str(tmp_path / "g.pt")
    m, res = train.train("gray", ds, epochs=2, batch_size=4, lr=0.05, seed=3, arch=arch, out=ck, progress=False,
                         log=lambda s: None, prior_from=src, val_photo="b", eval_every=1)
    assert all(torch.equal(a, b) for a, b in zip(sm.prior.state_dict().values(), m.prior.state_dict().values()))
    v = res["val"]
    assert v["images"] == 8 and v["curve"][0][0] == 0 and len(v["curve"]) == 5 and v["steps"] == 4
    assert v["best_bits_per_dim"] == min(b for _, b in v["curve"])
    assert train.evaluate(m, ds.train[photos == "b"])[0] == pytest.approx(v["best_bits_per_dim"], abs=1e-6)
    m2, ck2 = train.load_checkpoint(ck)
    assert ck2["meta"]["val"]["best_step"] == v["best_step"] and ck2["meta"]["prior_from"] == "src.pt"
    assert train.evaluate(m2, ds.test)[0] == pytest.approx(res["test_bits_per_dim"], abs=1e-6)
    with pytest.raises(ValueError, match="does not record the source photo"):
        data.hold_out_photo(tiny(3), "b")
    with pytest.raises(ValueError, match="no training image"):
        data.hold_out_photo(ds, "flower")
    with pytest.raises(ValueError, match="gray model only"):
        train.train("pixelcnn", ds, epochs=1, arch=TINY["pixelcnn"], progress=False, prior_from=src)


def test_hflip_mirrors_training_images(monkeypatch):
    """``hflip``: the batches the model sees are the training images, about half of them mirrored
    left-right (checked by recording every batch); the run's metadata says so."""
    from models.pixelcnn.models import GatedPixelCNN
    seen = []
    orig = GatedPixelCNN.bpd
    monkeypatch.setattr(GatedPixelCNN, "bpd", lambda self, x: (seen.append(x.numpy().copy()), orig(self, x))[1])
    ds = tiny(1, n=64)
    _, res = train.train("pixelcnn", ds, epochs=1, batch_size=64, arch=TINY["pixelcnn"], max_steps=1,
                         progress=False, log=lambda s: None, hflip=True)
    xb = seen[0]
    as_is = {x.tobytes() for x in ds.train}
    mirrored = {x[..., ::-1].copy().tobytes() for x in ds.train}
    n_plain = sum(x.tobytes() in as_is for x in xb)
    assert all(x.tobytes() in as_is or x.tobytes() in mirrored for x in xb)
    assert 16 < n_plain < 48 and res["hflip"] is True


def test_colour_perm_permutes_each_images_channels(monkeypatch):
    """``colour_perm``: every image the model sees is a training image with its RGB channels in some order,
    all six orders occur in a 240-image batch, and the order is per image; with probability 1/2, about 7/12
    keep theirs; one-channel data and probabilities outside (0, 1] are refused."""
    from models.pixelcnn.models import GatedPixelCNN
    seen = []
    orig = GatedPixelCNN.bpd
    monkeypatch.setattr(GatedPixelCNN, "bpd", lambda self, x: (seen.append(x.numpy().copy()), orig(self, x))[1])
    ds = tiny(3, levels=256, n=240)
    _, res = train.train("pixelcnn", ds, epochs=1, batch_size=240, arch=TINY["pixelcnn"], max_steps=1,
                         progress=False, log=lambda s: None, colour_perm=1.0)
    xb = seen[0]
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    by_image = {x.tobytes(): x for x in ds.train}
    used = []
    for x in xb:
        hits = [o for o in orders for t in [x[list(np.argsort(o))]] if t.tobytes() in by_image]
        assert len(hits) == 1
        used.append(hits[0])
    assert len(set(used)) == 6 and res["colour_perm"] == 1.0
    seen.clear()  # with probability 1/2: about 1/2 + 1/12 of the images keep their order
    train.train("pixelcnn", ds, epochs=1, batch_size=240, arch=TINY["pixelcnn"], max_steps=1, progress=False,
                log=lambda s: None, colour_perm=0.5)
    kept = sum(x.tobytes() in by_image for x in seen[0])
    assert 0.45 * 240 < kept < 0.72 * 240
    with pytest.raises(ValueError, match="probability"):
        train.train("pixelcnn", ds, epochs=1, arch=TINY["pixelcnn"], progress=False, colour_perm=1.5)
    with pytest.raises(ValueError, match="permutes RGB channels"):
        train.train("pixelcnn", tiny(1), epochs=1, arch=TINY["pixelcnn"], progress=False, colour_perm=1.0)


def test_image_stats_cli(tmp_path):
    """``python -m models.pixelcnn.image_stats CKPT``: samples a trained checkpoint and reports its statistics
    beside the training and test images'."""
    import json

    from models.pixelcnn import image_stats
    ck = str(tmp_path / "m.pt")
    train.train("pixelcnn", "digits", epochs=1, batch_size=8, arch=TINY["pixelcnn"], max_steps=1, out=ck,
                progress=False, log=lambda s: None)
    out = image_stats.main([ck, "-n", "3", "--json", str(tmp_path / "s.json")])
    assert out[ck]["images"] == 3 and out["digits:train_images"]["images"] == 1000
    assert json.loads((tmp_path / "s.json").read_text())[ck]["neighbour_abs_diff_levels"] >= 0
    with pytest.raises(SystemExit):
        image_stats.main([ck, "-n", "0"])


def test_cond_export_cli_per_layer_stream(tmp_path):
    """``python -m models.pixelcnn.cond_export gray CKPT OUT --stream per_layer``: a bundle whose gated stages
    take each h_{l-1} as an identity-weighted input (no residual adds) and whose integer chain tracks the
    float model; an unknown kind is a usage error."""
    from models.pixelcnn import cond_export
    ck = str(tmp_path / "g.pt")
    train.train("gray", "digits", epochs=1, batch_size=8, max_steps=2, out=ck, progress=False, log=lambda s: None,
                arch=dict(hidden=6, n_layers=2, gray_hidden=4, gray_layers=2, cond_hidden=4, cond_layers=2,
                          cond_dilated=0, exact=0))
    bundle, fb, ib = cond_export.main(["gray", ck, str(tmp_path / "g.npz"), "--stream", "per_layer", "--calib-n", "64"])
    hout = [op for st in ("prior", "colour") for op in bundle["stages"][st]["ops"] if op["name"].startswith("Hout")]
    assert [len(op["inputs"]) for op in hout] == [1, 2, 1, 2] and not any(op["residual"] for op in hout)
    assert abs(ib - fb) < 0.1
    with pytest.raises(SystemExit):
        cond_export.main(["faces", ck, str(tmp_path / "x.npz")])


@pytest.mark.parametrize("margin", [None, 0.1])
def test_logit_penalty_known_answer(margin):
    """``LogitPenalty``: in training mode it collects, per gated head, the mean square of the centred logits
    (or of how far each logit lies more than ``margin`` nats below its sub-pixel's largest), computed here
    from the model's own logits; nothing in eval mode; one hook per gated net of a Grayscale model."""
    from models.pixelcnn.models import build, gated_nets
    torch.manual_seed(0)
    m = build("pixelcnn", 3, 5, **TINY["pixelcnn"]).double()
    x = torch.from_numpy(tiny(3).train)
    pen = train.LogitPenalty(m, margin)
    m.eval()
    z = m(x)
    assert pen.terms == []
    m.train()
    m(x)
    if margin is None:
        want = (z - z.mean(2, keepdim=True)).pow(2).mean()
    else:
        want = (z.amax(2, keepdim=True) - z - margin).clamp(min=0).pow(2).mean()
    assert float(want) > 0 and abs(float(pen.pop()) - float(want)) < 1e-6 * float(want)  # the hook sums in float32
    assert len(train.LogitPenalty(build("gray", 3, 5, **TINY["gray"])).hooks) == 2
    assert len(gated_nets(build("pyramid", 3, 5, **TINY["pyramid"]))) == 2


def test_logit_penalty_narrows_the_logits():
    """Training with a strong ``logit_penalty`` ends with a much smaller logit range than the same run without
    it (same seed and batches); the run's metadata records the penalty."""
    x = np.full((64, 1, 4, 4), 3)  # one value everywhere: without the penalty the logits grow without bound
    ds = data.Dataset("const", x, x[:4], 17)
    ranges = {}
    for lam in (0.0, 10.0):
        m, res = train.train("pixelcnn", ds, epochs=10, batch_size=16, lr=2e-2, arch=TINY["pixelcnn"], progress=False,
                             log=lambda s: None, logit_penalty=lam, logit_margin=None)
        with torch.no_grad():
            z = m(torch.from_numpy(ds.test))
        ranges[lam] = float((z - z.mean(2, keepdim=True)).abs().mean())
        assert res.get("logit_penalty", 0.0) == lam
    assert ranges[10.0] < 0.5 * ranges[0.0], ranges
    for bad in (dict(logit_penalty=-1.0), dict(logit_margin=30.0), dict(logit_penalty=1.0, logit_margin=-1.0)):
        with pytest.raises(ValueError, match="margin .* applies only with a penalty"):
            train.train("pixelcnn", ds, epochs=1, arch=TINY["pixelcnn"], progress=False, **bad)


def test_init_from_starts_from_the_checkpoint(tmp_path):
    """``init_from``: training starts from the checkpoint's weights (with lr 0 they come out unchanged);
    a checkpoint of another architecture is refused with a message naming both."""
    ds = tiny(1)
    src = tmp_path / "a.pt"
    a, _ = train.train("pixelcnn", ds, epochs=1, batch_size=4, arch=TINY["pixelcnn"], progress=False,
                       log=lambda s: None, out=str(src))
    b, res = train.train("pixelcnn", ds, epochs=1, batch_size=4, lr=0.0, seed=5, arch=TINY["pixelcnn"],
                         progress=False, log=lambda s: None, init_from=str(src))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert res["init_from"]["checkpoint"] == "a.pt"
    with pytest.raises(ValueError, match="init-from .*arch"):
        train.train("pixelcnn", ds, epochs=1, arch=dict(TINY["pixelcnn"], hidden=8), progress=False,
                    log=lambda s: None, init_from=str(src))
