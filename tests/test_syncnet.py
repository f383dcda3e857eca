"""SyncNet (LSE-C / LSE-D): weights by path, MFCC fidelity, input layout and the offset search."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from engines.errors import InputError
from offline_training.evaluation.mfcc import mfcc
from offline_training.evaluation.syncnet import (
    SyncNet,
    SyncScores,
    load_syncnet,
    lse_scores,
    offset_distances,
    syncnet_frames,
    syncnet_mfcc,
)

IntArray = npt.NDArray[np.int16]
Array = npt.NDArray[np.float64]
RATE = 16000
FPS = 25
SPF = RATE // FPS


# ----------------------------------------------------------------------------- MFCC


def _mfcc_signal() -> IntArray:
    """0.25 s of int16 tones with a silent stretch (exercises the log(eps) branch)."""
    n = np.arange(4000)
    sig = np.round(
        8000 * np.sin(2 * np.pi * 440 * n / RATE)
        + 3000 * np.sin(2 * np.pi * 1234.5 * n / RATE + 0.3) * (n / 4000)
    )
    sig[3000:3500] = 0
    out: IntArray = sig.astype(np.int16)
    return out


# Rows 0, 7, 19 and 23 of python_speech_features.mfcc(_mfcc_signal(), 16000), computed once with
# python_speech_features 0.6 (the PyPI release; numpy 1.26.4) in a throwaway virtualenv, to 10
# significant digits. Row 19 lies in the silent stretch: log(eps) energy, zero cepstra.
PSF_ROWS = {
    0: [19.06281456, 18.85610851, 0.546177872, -14.86511943, -25.30745723, -30.75097657, -29.75322824,
        -21.54876162, -4.804821891, 12.61127782, 21.45166442, 17.69459485, 8.488567218],
    7: [19.17762275, 42.9492725, 0.2339616692, -26.43180762, -16.22314778, -3.21643785, -16.64854835,
        -35.48395481, -20.55516559, 19.12346063, 41.96966105, 26.11743036, -1.764177886],
    19: [-36.04365339, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    23: [19.51943401, 22.64727827, -12.31241941, -26.73305923, -12.80617641, -3.26806808, -18.58246284,
         -36.05764766, -20.82571356, 17.54953398, 39.17083128, 24.20597412, -2.765664354],
}  # fmt: skip


def test_mfcc_matches_python_speech_features_reference_values() -> None:
    features = mfcc(_mfcc_signal(), RATE)
    assert features.shape == (24, 13)  # 1 + ceil((4000 - 400) / 160)
    for row, expected in PSF_ROWS.items():
        np.testing.assert_allclose(features[row], expected, rtol=1e-8, atol=1e-8)


def _naive_mfcc(signal: IntArray) -> Array:
    """A loop-by-loop MFCC with python_speech_features' default settings, written independently."""
    x = signal.astype(np.float64)
    y = np.empty_like(x)
    y[0] = x[0]
    for i in range(1, len(x)):
        y[i] = x[i] - 0.97 * x[i - 1]
    count = 1 + math.ceil((len(y) - 400) / 160)
    y = np.concatenate([y, np.zeros((count - 1) * 160 + 400 - len(y))])
    mel = np.linspace(0.0, 2595 * math.log10(1 + 8000 / 700), 28)
    edges = [math.floor(513 * 700 * (10 ** (m / 2595) - 1) / RATE) for m in mel]
    bank = np.zeros((26, 257))
    for j in range(26):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        for b in range(257):
            if lo <= b < mid:
                bank[j, b] = (b - lo) / (mid - lo)
            elif mid <= b < hi:
                bank[j, b] = (hi - b) / (hi - mid)
    k = np.arange(26)
    basis = np.array([np.cos(np.pi * q * (2 * k + 1) / 52) for q in range(13)])  # DCT-II rows
    scale = np.full(13, math.sqrt(2 / 26))
    scale[0] = math.sqrt(1 / 26)
    lift = np.array([1 + 11 * math.sin(math.pi * q / 22) for q in range(13)])
    out = np.zeros((count, 13))
    for f in range(count):
        frame = np.concatenate([y[f * 160 : f * 160 + 400], np.zeros(112)])
        spectrum = np.array(
            [
                abs(np.sum(frame * np.exp(-2j * np.pi * b * np.arange(512) / 512))) ** 2 / 512
                for b in range(257)
            ]
        )
        energies = np.maximum(bank @ spectrum, np.finfo(float).eps)
        out[f] = scale * (basis @ np.log(energies)) * lift
        out[f, 0] = math.log(max(spectrum.sum(), np.finfo(float).eps))
    return out


def test_mfcc_matches_an_independent_loop_implementation() -> None:
    rng = np.random.default_rng(5)
    signal = (rng.standard_normal(2345) * 4000).astype(np.int16)  # a ragged, zero-padded last frame
    np.testing.assert_allclose(mfcc(signal, RATE), _naive_mfcc(signal), rtol=1e-7, atol=1e-7)


def test_syncnet_mfcc_scales_float_audio_to_int16() -> None:
    rng = np.random.default_rng(1)
    ints = (rng.standard_normal(3200) * 3000).astype(np.int16)
    features = syncnet_mfcc((ints / 32768.0).astype(np.float32))
    assert features.shape == (13, 19) and features.dtype == torch.float32
    np.testing.assert_allclose(features.numpy(), mfcc(ints, RATE).T.astype(np.float32), rtol=1e-6)


# ----------------------------------------------------------------------------- layout and network


def test_frames_are_fed_as_224_bgr() -> None:
    frames = np.zeros((2, 50, 40, 3), np.uint8)
    frames[..., 0] = 200  # red
    frames[..., 1] = 100  # green
    video = syncnet_frames(frames)
    assert video.shape == (2, 3, 224, 224)
    assert np.unique(video[:, 0].numpy()).tolist() == [0]  # blue first, as cv2.imread gives it
    assert np.unique(video[:, 1].numpy()).tolist() == [100]
    assert np.unique(video[:, 2].numpy()).tolist() == [200]


def test_network_shapes_and_parameter_names() -> None:
    net = SyncNet().eval()
    with torch.no_grad():
        lip = net.forward_lip(torch.zeros(2, 3, 5, 224, 224))
        aud = net.forward_aud(torch.zeros(2, 1, 13, 20))
    assert lip.shape == aud.shape == (2, 1024)
    # Convolutions and batch norms sit at the same nn.Sequential indices as in SyncNetModel.S.
    convs = [(0, 1), (4, 5), (8, 9), (11, 12), (14, 15), (18, 19)]
    expected = {f"{net}.{i}.weight" for net in ("netcnnaud", "netcnnlip") for pair in convs for i in pair}
    expected |= {f"{net}.{i}.weight" for net in ("netfcaud", "netfclip") for i in (0, 1, 3)}
    assert {k for k in net.state_dict() if k.endswith(".weight")} == expected
    assert "netcnnlip.19.running_mean" in net.state_dict() and "netfclip.1.running_var" in net.state_dict()
    assert tuple(net.state_dict()["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(net.state_dict()["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)


# ----------------------------------------------------------------------------- weights by path


def _clip(frames: int, seed: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (frames, 48, 48, 3), dtype=np.uint8)
    audio = (rng.standard_normal(frames * SPF) * 0.1).astype(np.float32)
    return video, audio


@pytest.fixture(scope="module")
def random_state() -> dict[str, Tensor]:
    torch.manual_seed(0)
    net = SyncNet()
    with torch.no_grad():  # non-trivial running statistics, so that a mix-up of buffers shows
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_state_dict_and_safetensors_load_by_path_and_score(
    random_state: dict[str, Tensor], tmp_path: Path
) -> None:
    pt_path = tmp_path / "syncnet_v2.model"
    # Old checkpoints (syncnet_v2.model) lack the BatchNorm counters.
    torch.save({k: v for k, v in random_state.items() if not k.endswith("num_batches_tracked")}, pt_path)
    st_path = tmp_path / "syncnet.safetensors"
    save_file(random_state, str(st_path))

    from_pt = load_syncnet(pt_path)
    from_st = load_syncnet(st_path)
    assert not from_pt.training
    for name, value in random_state.items():
        assert torch.equal(from_pt.state_dict()[name].float(), value.float()) or name.endswith("tracked")
        assert torch.equal(from_st.state_dict()[name], value)

    video, audio = _clip(9)
    scores = lse_scores(video, audio, from_pt)
    assert isinstance(scores, SyncScores)
    assert scores.frames == 9
    assert math.isfinite(scores.lse_c) and math.isfinite(scores.lse_d)
    assert scores.lse_d > 0 and scores.lse_c >= 0
    assert -15 <= scores.offset_frames <= 15
    again = lse_scores(video, audio, from_st, batch_size=2)
    assert again.offset_frames == scores.offset_frames
    assert again.lse_d == pytest.approx(scores.lse_d, rel=1e-4)
    assert again.lse_c == pytest.approx(scores.lse_c, rel=1e-3, abs=1e-4)


def test_prefixed_keys_load(random_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "instance.pth"
    torch.save({f"__S__.{k}": v for k, v in random_state.items()}, path)
    loaded = load_syncnet(path)
    assert torch.equal(loaded.state_dict()["netfcaud.3.bias"], random_state["netfcaud.3.bias"])


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "syncnet_v2.model"
    with pytest.raises(InputError, match="do not exist") as info:
        load_syncnet(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wrong_keys_and_shapes_are_input_errors(random_state: dict[str, Tensor], tmp_path: Path) -> None:
    renamed = dict(random_state)
    renamed["netcnnlip.99.weight"] = renamed.pop("netcnnlip.0.weight")
    path = tmp_path / "renamed.pt"
    torch.save(renamed, path)
    with pytest.raises(InputError, match=r"missing netcnnlip\.0\.weight; unexpected netcnnlip\.99") as info:
        load_syncnet(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)

    reshaped = dict(random_state)
    reshaped["netfcaud.3.weight"] = torch.zeros(512, 512)
    path = tmp_path / "reshaped.safetensors"
    save_file(reshaped, str(path))
    with pytest.raises(InputError, match=r"wrong shape netfcaud\.3\.weight \(512, 512\)") as info:
        load_syncnet(path)
    assert str(path) in str(info.value)


def test_unreadable_and_pickled_module_files_are_input_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match=r"garbage\.model") as info:
        load_syncnet(garbage)
    assert "\n" not in str(info.value)

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match=r"bad\.safetensors"):
        load_syncnet(bad_st)

    whole = tmp_path / "whole.model"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), whole)  # a pickled module, not a state dict
    with pytest.raises(InputError, match="not a plain state dict") as info:
        load_syncnet(whole)
    message = str(info.value)
    assert str(whole) in message and "state_dict()" in message and "\n" not in message


def test_too_short_inputs_are_input_errors() -> None:
    net = SyncNet()
    video, audio = _clip(5)
    with pytest.raises(InputError, match="at least 6 frames"):
        lse_scores(video, audio, net)
    video, audio = _clip(20)
    with pytest.raises(InputError, match="shorter than the video"):
        lse_scores(video, audio[: 15 * SPF], net)
    with pytest.raises(InputError, match="uint8"):
        lse_scores(video.astype(np.float32), audio, net)


# ----------------------------------------------------------------------------- the offset search


class SignalSyncNet(SyncNet):
    """Embeds each window as the (centred, log) per-frame level of a known series.

    Video frame t is a flat image of level ``250 s[t]``; the audio of video frame m is a 1 kHz tone
    of amplitude proportional to the series. The lip embedding of a window is the log brightness of
    its 5 frames; the audio embedding is half the log energy (MFCC coefficient 0) of MFCC frames
    4j+1, which lie wholly inside video frame j of the window. Both are centred, so a matching pair
    of windows embeds to (almost) the same vector.
    """

    def forward_lip(self, x: Tensor) -> Tensor:
        emb = torch.log(x.mean(dim=(1, 3, 4)))  # (N, 5)
        return emb - emb.mean(dim=1, keepdim=True)

    def forward_aud(self, x: Tensor) -> Tensor:
        emb = x[:, 0, 0, 1::4] / 2  # (N, 5)
        return emb - emb.mean(dim=1, keepdim=True)


def _series_clip(
    series: Array, audio_series: Array, frames: int, lead: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Video showing ``series[t]`` at frame t; audio carrying ``audio_series[m + lead]`` at frame m."""
    grey = np.repeat(np.round(250 * series[:frames])[:, None, None, None], 3, axis=3)
    video = np.broadcast_to(grey, (frames, 16, 16, 3)).astype(np.uint8)
    amplitude = np.repeat(audio_series[np.arange(frames) + lead], SPF)
    tone = np.sin(2 * np.pi * 1000 * np.arange(frames * SPF) / RATE)
    return video, (0.5 * amplitude * tone).astype(np.float32)


@pytest.mark.parametrize("lag", [0, 3, -4])
def test_offset_search_recovers_a_known_lag(lag: int) -> None:
    rng = np.random.default_rng(11)
    frames = 60
    # Indexing from 5 keeps m + lag inside the series for negative lags.
    series = rng.uniform(0.15, 1.0, frames + 20)
    base = series[5:]
    # The video shows at frame m + lag what the audio carries at frame m.
    video, audio = _series_clip(base, base, frames, lag)
    net = SignalSyncNet()
    synced = lse_scores(video, audio, net)
    assert synced.offset_frames == lag
    assert synced.frames == frames

    unrelated_series = rng.uniform(0.15, 1.0, frames + 20)
    _, other_audio = _series_clip(base, unrelated_series[5:], frames, lag)
    unrelated = lse_scores(video, other_audio, net)
    assert synced.lse_c > 3 * unrelated.lse_c
    assert synced.lse_d < 0.5 * unrelated.lse_d
    # Batching changes nothing.
    assert lse_scores(video, audio, net, batch_size=7) == synced


def test_offset_distances_pads_with_zero_vectors() -> None:
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    dists = offset_distances(video, audio, vshift=1)
    assert dists.shape == (3, 3)
    # Column 1 pairs each window with itself; column 0 with the previous one (zeros before the start).
    assert torch.allclose(dists[:, 1], torch.zeros(3), atol=1e-5)
    assert dists[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert dists[2, 2] == pytest.approx(math.sqrt(8), abs=1e-5)
    assert dists[1, 0] == pytest.approx(math.sqrt(2), abs=1e-5)
