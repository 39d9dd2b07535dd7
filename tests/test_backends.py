"""The SSL back-ends: XLSR-Conformer-TCM and XLSR-Mamba (shapes, sizes, checkpoint key names,
gradients, the selective scan, bidirectionality)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpda.models.conformer_tcm import ConformerTCMBackEnd, TCMAttention, sinusoidal_positions
from dpda.models.mamba import (
    BiMambaMixer,
    Mamba,
    MambaBackEnd,
    selective_scan,
    selective_scan_chunked,
    selective_scan_sequential,
)

SSL_DIM = 32


def small_conformer(**options) -> ConformerTCMBackEnd:
    torch.manual_seed(0)
    return ConformerTCMBackEnd(
        **{"ssl_dim": SSL_DIM, "emb_size": 16, "heads": 4, "kernel_size": 5, "n_encoders": 2, **options}
    )


def small_mamba(**options) -> MambaBackEnd:
    torch.manual_seed(0)
    return MambaBackEnd(**{"ssl_dim": SSL_DIM, "emb_size": 16, "n_layers": 2, **options})


BACKENDS = [small_conformer, small_mamba]


def features(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, SSL_DIM, generator=torch.Generator().manual_seed(seed))


def scan_inputs(
    length: int,
    batch: int = 2,
    d_inner: int = 6,
    d_state: int = 4,
    seed: int = 0,
    delta_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = rand(batch, length, d_inner)
    delta = delta_scale * F.softplus(rand(batch, length, d_inner) - 1)
    A = -torch.exp(rand(d_inner, d_state))
    B, C, D = rand(batch, length, d_state), rand(batch, length, d_state), rand(d_inner)
    return [t.to(dtype) for t in (u, delta, A, B, C, D)]


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("build", BACKENDS)
@pytest.mark.parametrize("batch, frames", [(1, 1), (2, 7), (3, 40)])
def test_shapes_and_finite_outputs_for_any_length(build, batch, frames):
    model = build()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        embedding, logits = model(features(batch, frames))
        assert embedding.shape == (batch, 16) and logits.shape == (batch, 2)
        assert torch.isfinite(embedding).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("cls", [ConformerTCMBackEnd, MambaBackEnd])
def test_features_of_the_wrong_shape_are_rejected(cls):
    model = cls(ssl_dim=SSL_DIM, emb_size=16)
    for bad in (torch.randn(2, 5, SSL_DIM + 1), torch.randn(5, SSL_DIM), torch.randn(2, 0, SSL_DIM)):
        with pytest.raises(ValueError, match="expected features"):
            model(bad)


def test_default_conformer_tcm_has_the_paper_size():
    model = ConformerTCMBackEnd()
    # LL 147,600 + first_bn 2 + 4 blocks x 558,648 + class token 144 + fc5 290 (the paper code's
    # nb_params, which counts trainable parameters only).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2_382_628
    # The positional table is the one frozen parameter, as in the paper code.
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["conformer.positional_emb"]
    assert model.conformer.positional_emb.shape == (1, 10000, 144)
    block = model.conformer.encoder_blocks[0]
    assert sum(p.numel() for p in block.parameters()) == 558_648
    assert block.conv.net[4].conv.weight.shape == (288, 1, 31)
    assert block.attn.fn.qkv.weight.shape == (432, 144) and block.attn.fn.ht_proj.weight.shape == (144, 36)


def test_default_mamba_has_the_paper_size():
    model = MambaBackEnd()
    # LL 147,600 + first_bn 2 + 2 columns x 6 blocks x 145,584 + norm_f 144 + pools 2 x 145
    # + column merge 41,616 + classifier 290.
    assert sum(p.numel() for p in model.parameters()) == 1_936_950
    assert len(model.conformer.forward_layers) == len(model.conformer.backward_layers) == 6
    mixer = model.conformer.forward_layers[0].mixer
    assert sum(p.numel() for p in model.conformer.forward_layers[0].parameters()) == 145_584
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "A_log": (288, 16),
        "D": (288,),
        "in_proj.weight": (576, 144),
        "conv1d.weight": (288, 1, 4),
        "conv1d.bias": (288,),
        "x_proj.weight": (41, 288),
        "dt_proj.weight": (288, 9),
        "dt_proj.bias": (288,),
        "out_proj.weight": (144, 288),
    }


def test_mamba_starts_from_the_mamba_ssm_initialisation():
    mixer = small_mamba().conformer.forward_layers[0].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1.0, 17.0)).repeat(32, 1))
    assert torch.equal(mixer.D, torch.ones(32))
    step = F.softplus(mixer.dt_proj.bias)
    assert step.min() >= 1e-3 * (1 - 1e-5) and step.max() <= 0.1 * (1 + 1e-5)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("cls, key", [(ConformerTCMBackEnd, "n_encoders"), (MambaBackEnd, "n_layers")])
def test_from_config_builds_and_rejects_unknown_keys(cls, key):
    model = cls.from_config({"ssl_dim": SSL_DIM, "emb_size": 16, key: 1})
    assert model.ssl_dim == SSL_DIM and model.emb_size == 16
    suggestion = r"unknown key 'emb_sise' \(did you mean 'emb_size'\?\); allowed: ssl_dim, "
    with pytest.raises(ValueError, match=suggestion):
        cls.from_config({"emb_sise": 16})
    with pytest.raises(ValueError, match="unknown key 'colour'; allowed"):
        cls.from_config({"colour": "red"})


def test_unknown_scan_method_is_rejected():
    with pytest.raises(ValueError, match="unknown scan method 'fast'"):
        MambaBackEnd(ssl_dim=SSL_DIM, emb_size=16, scan="fast")
    with pytest.raises(ValueError, match="unknown scan method"):
        selective_scan(*scan_inputs(3), method="fast")


# ---------------------------------------------------------------- checkpoint key names


def test_conformer_tcm_state_dict_keys_are_the_reference_keys():
    block = "conformer.encoder_blocks.0."
    ff_parts = ("fn.net.0.weight", "fn.net.0.bias", "fn.net.3.weight", "fn.net.3.bias", "norm.weight", "norm.bias")
    ff = [f"{name}.fn.{part}" for name in ("ff1", "ff2") for part in ff_parts]
    attn = [
        "attn.fn.pos_embed",
        "attn.fn.qkv.weight",
        "attn.fn.proj.weight",
        "attn.fn.proj.bias",
        "attn.fn.ht_proj.weight",
        "attn.fn.ht_proj.bias",
        "attn.fn.ht_norm.weight",
        "attn.fn.ht_norm.bias",
        "attn.norm.weight",
        "attn.norm.bias",
    ]
    conv = [
        "conv.net.0.weight",
        "conv.net.0.bias",
        "conv.net.2.weight",
        "conv.net.2.bias",
        "conv.net.4.conv.weight",
        "conv.net.4.conv.bias",
        "conv.net.5.weight",
        "conv.net.5.bias",
        "conv.net.5.running_mean",
        "conv.net.5.running_var",
        "conv.net.5.num_batches_tracked",
        "conv.net.7.weight",
        "conv.net.7.bias",
    ]
    expected = {
        "LL.weight",
        "LL.bias",
        "first_bn.weight",
        "first_bn.bias",
        "first_bn.running_mean",
        "first_bn.running_var",
        "first_bn.num_batches_tracked",
        "conformer.positional_emb",
        "conformer.class_token",
        "conformer.fc5.weight",
        "conformer.fc5.bias",
        *(block + key for key in [*ff, *attn, *conv, "post_norm.weight", "post_norm.bias"]),
    }
    assert set(small_conformer(n_encoders=1).state_dict()) == expected


def test_mamba_state_dict_keys_are_the_reference_keys_in_order():
    mixer = [
        "A_log",
        "D",
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "x_proj.weight",
        "dt_proj.weight",
        "dt_proj.bias",
        "out_proj.weight",
    ]
    expected = [
        "LL.weight",
        "LL.bias",
        "first_bn.weight",
        "first_bn.bias",
        "first_bn.running_mean",
        "first_bn.running_var",
        "first_bn.num_batches_tracked",
        *(
            f"conformer.{column}.0.{key}"
            for column in ("forward_layers", "backward_layers")
            for key in [*(f"mixer.{name}" for name in mixer), "norm.weight"]
        ),
        "conformer.norm_f.weight",
        "conformer.f_attention_pool.weight",
        "conformer.f_attention_pool.bias",
        "conformer.b_attention_pool.weight",
        "conformer.b_attention_pool.bias",
        "conformer.LL.weight",
        "conformer.LL.bias",
        "conformer.classifier.weight",
        "conformer.classifier.bias",
    ]
    assert list(small_mamba(n_layers=1).state_dict()) == expected


@pytest.mark.parametrize("build", BACKENDS)
def test_a_state_dict_round_trip_reproduces_the_outputs(build):
    source, target = build(), build()
    source(features(4, 9, seed=3))  # running statistics that differ from the target's
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    x = features(2, 9)
    assert torch.equal(source(x)[1], target(x)[1])


# ---------------------------------------------------------------- gradients and determinism

# Gradients that are zero by construction: a bias right before a training-mode BatchNorm, and a
# bias inside a softmax over frames.
INVARIANT = ("conv.net.4.conv.bias", "attention_pool.bias")


@pytest.mark.parametrize("build", [small_conformer, lambda: small_mamba(reference_final_add=False)])
def test_every_parameter_receives_a_gradient(build):
    model = build().train()
    _, logits = model(features(3, 11))
    F.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.endswith(INVARIANT):
            assert p.grad.abs().sum() > 0, name


def test_reference_mamba_ignores_the_last_block_of_each_column():
    """The reference model's fused add+norm feeds the column input, not the last block's output,
    to the final norm: those blocks neither change the logits nor get gradients."""
    model = small_mamba().eval()
    x = features(2, 10)
    before = model(x)[1]
    with torch.no_grad():
        for column in (model.conformer.forward_layers, model.conformer.backward_layers):
            for p in column[-1].parameters():
                p.add_(1.0)
    assert torch.equal(model(x)[1], before)
    model(x)[1].sum().backward()
    dead = {name for name, p in model.named_parameters() if p.grad is None}
    assert dead == {
        name for name, _ in model.named_parameters() if ".forward_layers.1." in name or ".backward_layers.1." in name
    }


@pytest.mark.parametrize("build", BACKENDS)
def test_eval_mode_is_deterministic_and_per_utterance(build):
    model = build()
    model(features(4, 12))  # move the BatchNorm running statistics off their initial values
    model.eval()
    x = features(3, 12, seed=2)
    first, second = model(x), model(x)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    alone = model(x[1:2])[1]
    torch.testing.assert_close(alone, first[1][1:2], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Conformer-TCM details


def test_sinusoidal_positions_follow_the_formula():
    table = sinusoidal_positions(50, 16)
    assert table.shape == (1, 50, 16)
    p, i = 37, 5  # channel 2i is a sine, 2i + 1 a cosine of the same angle
    angle = p / 10000 ** (2 * i / 16)
    assert table[0, p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[0, p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.equal(sinusoidal_positions(20, 16), table[:, :20])


def test_inputs_longer_than_the_stored_table_get_positions_on_the_fly():
    model = small_conformer().eval()
    x = features(1, 12)
    expected = model(x)[1]
    model.conformer.positional_emb = torch.nn.Parameter(model.conformer.positional_emb[:, :8], requires_grad=False)
    torch.testing.assert_close(model(x)[1], expected)


def test_tcm_attention_matches_a_head_by_head_computation():
    torch.manual_seed(3)
    dim, heads, frames = 12, 3, 6
    attn = TCMAttention(dim, heads).eval()
    torch.nn.init.normal_(attn.pos_embed)
    x = torch.randn(2, frames + 1, dim)  # token 0 plays the class token
    d = dim // heads
    expected = []
    for b in range(2):
        head_tokens = []
        for h in range(heads):
            summary = x[b, :, h * d : (h + 1) * d].mean(dim=0)
            lifted = attn.ht_proj(summary).view(heads, d)
            head_tokens.append(F.gelu(attn.ht_norm(lifted)).flatten() + attn.pos_embed[0, h])
        tokens = torch.cat([x[b], torch.stack(head_tokens)])
        q, k, v = attn.qkv(tokens).split(dim, dim=-1)
        head = [slice(h * d, (h + 1) * d) for h in range(heads)]
        mixed = torch.cat([torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1) @ v[:, s] for s in head], dim=-1)
        out = attn.proj(mixed)
        cls = out[0] + out[frames + 1 :].mean(dim=0) + out[1 : frames + 1].mean(dim=0)
        expected.append(torch.cat([cls[None], out[1 : frames + 1]]))
    torch.testing.assert_close(attn(x), torch.stack(expected), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the selective scan


@pytest.mark.parametrize("length", [1, 2, 17, 64, 300])
def test_chunked_scan_equals_the_sequential_scan(length):
    inputs = scan_inputs(length)
    reference = selective_scan_sequential(*inputs)
    torch.testing.assert_close(selective_scan_chunked(*inputs), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(selective_scan(*inputs), reference, rtol=1e-5, atol=1e-5)
    for chunk_size in (1, 5, length + 3):
        torch.testing.assert_close(
            selective_scan_chunked(*inputs, chunk_size=chunk_size), reference, rtol=1e-5, atol=1e-5
        )


def test_chunked_scan_is_exact_in_float64_and_stable_for_large_steps():
    inputs = scan_inputs(300, dtype=torch.float64)
    torch.testing.assert_close(
        selective_scan_chunked(*inputs), selective_scan_sequential(*inputs), rtol=1e-12, atol=1e-12
    )
    inputs = scan_inputs(300, delta_scale=50.0)  # decays down to exp(-hundreds) within a chunk
    fast = selective_scan_chunked(*inputs)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, selective_scan_sequential(*inputs), rtol=1e-5, atol=1e-5)


def test_chunked_scan_gradients_equal_the_sequential_ones():
    inputs = [t.requires_grad_() for t in scan_inputs(70)]
    weights = torch.randn(2, 70, 6, generator=torch.Generator().manual_seed(9))
    grads = [
        torch.autograd.grad((scan(*inputs) * weights).sum(), inputs)
        for scan in (selective_scan_sequential, selective_scan_chunked)
    ]
    for slow, fast in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_mamba_mixer_is_the_same_with_either_scan():
    torch.manual_seed(4)
    mixer = Mamba(8)
    x = torch.randn(2, 45, 8)
    mixer.scan = "sequential"
    slow = mixer(x)
    mixer.scan = "chunked"
    torch.testing.assert_close(mixer(x), slow, rtol=1e-5, atol=1e-6)


def test_mamba_mixer_is_causal():
    torch.manual_seed(4)
    mixer = Mamba(8)
    x = torch.randn(1, 30, 8)
    changed = x.clone()
    changed[:, 20] += 1.0
    before, after = mixer(x), mixer(changed)
    assert torch.equal(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 20:], after[:, 20:])


# ---------------------------------------------------------------- bidirectionality


def test_the_backward_column_reads_time_reversed():
    torch.manual_seed(6)
    mixer = BiMambaMixer(8, 2, reference_final_add=False).eval()
    mixer.backward_layers.load_state_dict(mixer.forward_layers.state_dict())
    x = torch.randn(2, 25, 8)
    forward_frames, backward_frames = mixer.columns(x)
    # With equal weights, the backward column on x is the forward column on reversed x.
    torch.testing.assert_close(backward_frames, mixer.columns(x.flip(1))[0])

    changed = x.clone()
    changed[:, -1] += 1.0  # the last frame
    forward_after, backward_after = mixer.columns(changed)
    assert torch.equal(forward_after[:, :-1], forward_frames[:, :-1])  # the past cannot see it
    first_frame = -1  # the backward column lists frames in reversed time
    assert not torch.allclose(backward_after[:, first_frame], backward_frames[:, first_frame])
    assert not torch.allclose(backward_after, backward_frames)


def test_the_mamba_back_end_sees_both_directions():
    model = small_mamba(reference_final_add=False).eval()
    x = features(1, 16)
    for frame in (0, -1):
        changed = x.clone()
        changed[:, frame] += 1.0
        assert not torch.allclose(model(changed)[1], model(x)[1])
