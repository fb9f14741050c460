"""SwinV2 weights: Microsoft SwinV2 / SimMIM state dicts and HF `Swinv2*` checkpoints <-> our SwinV2 params.

Microsoft's keys (`layers.{i}.blocks.{j}.attn.qkv.weight`, `q_bias`, `v_bias`, `cpb_mlp.*`, `norm1`, ...; SimMIM
adds an `encoder.` prefix and `decoder.0.*`) are first renamed to HF's layout (`encoder.layers.{i}.blocks.{j}.
attention.self.query.weight`, ...; `Swinv2ForMaskedImageModeling` adds `swinv2.`), which then maps onto our
params. Buffers (relative coordinate tables, position indices, shift masks) are recomputed, not read. The SimMIM
decoder (1x1 conv to s*s*3 channels + PixelShuffle(s)) maps onto our per-token head with its output channels
reordered from PixelShuffle's (channel, row, col) to our (row, col, channel).
"""
from __future__ import annotations

import os
import re

import numpy as np

from mim_jax.errors import ConfigError

HF_ENCODER_PREFIXES = ("swinv2.", "model.", "")
BUFFER_SUFFIXES = ("relative_coords_table", "relative_position_index", "attn_mask")


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float32)


def is_microsoft(sd: dict) -> bool:
    """True for Microsoft SwinV2 / SimMIM key names."""
    return any(re.search(r"(^|\.)layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight$", k) for k in sd)


def microsoft_to_hf(sd: dict) -> dict:
    """Rename a Microsoft SwinV2 (or SimMIM: `encoder.` prefix, `decoder.0`) state dict to HF `Swinv2` keys."""
    out = {}
    for key, value in sd.items():
        if key.endswith(BUFFER_SUFFIXES) or key.startswith("head."):
            continue
        k = key.removeprefix("encoder.")
        if key.startswith("decoder."):
            out[key] = _np(value)
            continue
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)$", k)
        if m:
            base = f"encoder.layers.{m[1]}.blocks.{m[2]}."
            out.update(_block_from_microsoft(base, m[3], _np(value)))
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)$", k)
        if m:
            out[f"encoder.layers.{m[1]}.downsample.{m[2]}"] = _np(value)
            continue
        renamed = {"patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                   "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                   "patch_embed.norm.weight": "embeddings.norm.weight", "patch_embed.norm.bias": "embeddings.norm.bias",
                   "mask_token": "embeddings.mask_token", "norm.weight": "layernorm.weight",
                   "norm.bias": "layernorm.bias"}
        if k not in renamed:
            raise ConfigError(f"Microsoft SwinV2 state dict: unexpected key {key!r}; is this a SwinV2 / SimMIM "
                              f"checkpoint?")
        out[renamed[k]] = _np(value)
    return out


def _block_from_microsoft(base: str, rest: str, value: np.ndarray) -> dict:
    if rest == "attn.qkv.weight":
        q, k, v = np.split(value, 3, axis=0)
        return {base + "attention.self.query.weight": q, base + "attention.self.key.weight": k,
                base + "attention.self.value.weight": v}
    names = {"attn.q_bias": "attention.self.query.bias", "attn.v_bias": "attention.self.value.bias",
             "attn.logit_scale": "attention.self.logit_scale",
             "attn.cpb_mlp.0.weight": "attention.self.continuous_position_bias_mlp.0.weight",
             "attn.cpb_mlp.0.bias": "attention.self.continuous_position_bias_mlp.0.bias",
             "attn.cpb_mlp.2.weight": "attention.self.continuous_position_bias_mlp.2.weight",
             "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
             "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
             "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
             "mlp.fc1.weight": "intermediate.dense.weight", "mlp.fc1.bias": "intermediate.dense.bias",
             "mlp.fc2.weight": "output.dense.weight", "mlp.fc2.bias": "output.dense.bias"}
    if rest not in names:
        raise ConfigError(f"Microsoft SwinV2 state dict: unexpected block key {base}{rest!r}")
    return {base + names[rest]: value}


def _strip_prefix(sd: dict) -> dict:
    for prefix in HF_ENCODER_PREFIXES:
        if f"{prefix}embeddings.patch_embeddings.projection.weight" in sd:
            return {(k.removeprefix(prefix)): _np(v) for k, v in sd.items()}
    raise ConfigError("SwinV2 weights: no patch embedding found (embeddings.patch_embeddings.projection.weight "
                      "or patch_embed.proj.weight); is this a SwinV2 checkpoint?")


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T


def hf_to_params(sd: dict, depths: tuple[int, ...], heads: tuple[int, ...]) -> dict:
    """HF `Swinv2Model` / `Swinv2ForMaskedImageModeling` state dict -> {'encoder': ..., ['head': ...]} params."""
    sd = _strip_prefix(sd)
    take = lambda k: _take(sd, k)
    w = take("embeddings.patch_embeddings.projection.weight")
    enc = {"patch_embed": {"kernel": w.transpose(2, 3, 1, 0), "bias": take("embeddings.patch_embeddings.projection.bias")},
           "patch_norm": _ln(sd, "embeddings.norm"), "norm": _ln(sd, "layernorm")}
    if "embeddings.mask_token" in sd:
        enc["mask_token"] = take("embeddings.mask_token")
    for i, (depth, h) in enumerate(zip(depths, heads)):
        blocks = [_block_to_params(sd, f"encoder.layers.{i}.blocks.{j}.", h) for j in range(depth)]
        enc[f"stage{i}_blocks"] = _stack(blocks)
        if i < len(depths) - 1:
            base = f"encoder.layers.{i}.downsample."
            enc[f"stage{i}_merge"] = {"reduction": {"kernel": _linear(take(base + "reduction.weight"))},
                                      "norm": _ln(sd, base + "norm")}
    out = {"encoder": enc}
    if "decoder.0.weight" in sd:
        out["head"] = decoder_to_head(take("decoder.0.weight"), take("decoder.0.bias"))
    return out


def _take(sd: dict, key: str) -> np.ndarray:
    if key not in sd:
        raise ConfigError(f"SwinV2 weights: missing {key!r}; the checkpoint does not match the configured size "
                          f"(model.variant / depths)")
    return sd[key]


def _ln(sd: dict, base: str) -> dict:
    return {"scale": _take(sd, base + ".weight"), "bias": _take(sd, base + ".bias")}


def _stack(trees: list) -> dict:
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return np.stack(trees)


def _block_to_params(sd: dict, base: str, heads: int) -> dict:
    s = base + "attention.self."
    c = _take(sd, s + "query.weight").shape[0]
    to_heads = lambda k: _linear(_take(sd, k)).reshape(c, heads, c // heads)
    attn = {"query_kernel": to_heads(s + "query.weight"),
            "query_bias": _take(sd, s + "query.bias").reshape(heads, -1),
            "key_kernel": to_heads(s + "key.weight"),
            "value_kernel": to_heads(s + "value.weight"),
            "value_bias": _take(sd, s + "value.bias").reshape(heads, -1),
            "logit_scale": _take(sd, s + "logit_scale").reshape(heads),
            "cpb_fc1": {"kernel": _linear(_take(sd, s + "continuous_position_bias_mlp.0.weight")),
                        "bias": _take(sd, s + "continuous_position_bias_mlp.0.bias")},
            "cpb_fc2": {"kernel": _linear(_take(sd, s + "continuous_position_bias_mlp.2.weight"))},
            "out_kernel": _linear(_take(sd, base + "attention.output.dense.weight")).reshape(heads, c // heads, c),
            "out_bias": _take(sd, base + "attention.output.dense.bias")}
    dense = lambda k: {"kernel": _linear(_take(sd, k + ".weight")), "bias": _take(sd, k + ".bias")}
    return {"attn": attn, "norm1": _ln(sd, base + "layernorm_before"), "norm2": _ln(sd, base + "layernorm_after"),
            "fc1": dense(base + "intermediate.dense"), "fc2": dense(base + "output.dense")}


def decoder_to_head(weight: np.ndarray, bias: np.ndarray) -> dict:
    """SimMIM's 1x1 conv [s*s*3, C, 1, 1] (+ PixelShuffle(s)) -> our head Dense [C, s*s*3] in (row, col, ch) order."""
    out_ch = weight.shape[0]
    s = round((out_ch // 3) ** 0.5)
    perm = _pixel_shuffle_order(s)
    return {"kernel": weight[:, :, 0, 0].T[:, perm], "bias": bias[perm]}


def _pixel_shuffle_order(s: int, channels: int = 3) -> np.ndarray:
    """perm[(i*s + j)*3 + c] = c*s*s + i*s + j: PixelShuffle's input channel of our output (row i, col j, channel c)."""
    i, j, c = np.meshgrid(np.arange(s), np.arange(s), np.arange(channels), indexing="ij")
    return (c * s * s + i * s + j).reshape(-1)


def params_to_hf(params: dict, prefix: str = "") -> dict:
    """Our {'encoder'[, 'head']} SwinV2 params -> HF `Swinv2Model` keys (prefix 'swinv2.' + 'decoder.0.*' for
    `Swinv2ForMaskedImageModeling`), numpy float32 arrays in torch layout."""
    enc = {k: v for k, v in params["encoder"].items()}
    out = {f"{prefix}embeddings.patch_embeddings.projection.weight": _np(enc["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
           f"{prefix}embeddings.patch_embeddings.projection.bias": _np(enc["patch_embed"]["bias"])}
    out.update(_ln_out(enc["patch_norm"], f"{prefix}embeddings.norm"))
    out.update(_ln_out(enc["norm"], f"{prefix}layernorm"))
    if "mask_token" in enc:
        out[f"{prefix}embeddings.mask_token"] = _np(enc["mask_token"])
    i = 0
    while f"stage{i}_blocks" in enc:
        stacked = enc[f"stage{i}_blocks"]
        for j in range(np.shape(stacked["norm1"]["scale"])[0]):
            block = _index(stacked, j)
            out.update(_block_out(block, f"{prefix}encoder.layers.{i}.blocks.{j}."))
        if f"stage{i}_merge" in enc:
            m = enc[f"stage{i}_merge"]
            out[f"{prefix}encoder.layers.{i}.downsample.reduction.weight"] = _np(m["reduction"]["kernel"]).T
            out.update(_ln_out(m["norm"], f"{prefix}encoder.layers.{i}.downsample.norm"))
        i += 1
    if "head" in params:
        kernel, bias = _np(params["head"]["kernel"]), _np(params["head"]["bias"])
        s = round((kernel.shape[1] // 3) ** 0.5)
        inverse = np.argsort(_pixel_shuffle_order(s))
        out["decoder.0.weight"] = kernel[:, inverse].T[:, :, None, None]
        out["decoder.0.bias"] = bias[inverse]
    return out


def _index(tree, j: int):
    return {k: _index(v, j) for k, v in tree.items()} if isinstance(tree, dict) else _np(tree)[j]


def _ln_out(ln: dict, base: str) -> dict:
    return {base + ".weight": _np(ln["scale"]), base + ".bias": _np(ln["bias"])}


def _block_out(b: dict, base: str) -> dict:
    a, s = b["attn"], base + "attention.self."
    c = a["query_kernel"].shape[0]
    flat = lambda k: a[k].reshape(c, c).T
    return {s + "query.weight": flat("query_kernel"), s + "query.bias": a["query_bias"].reshape(-1),
            s + "key.weight": flat("key_kernel"), s + "value.weight": flat("value_kernel"),
            s + "value.bias": a["value_bias"].reshape(-1), s + "logit_scale": a["logit_scale"].reshape(-1, 1, 1),
            s + "continuous_position_bias_mlp.0.weight": a["cpb_fc1"]["kernel"].T,
            s + "continuous_position_bias_mlp.0.bias": a["cpb_fc1"]["bias"],
            s + "continuous_position_bias_mlp.2.weight": a["cpb_fc2"]["kernel"].T,
            base + "attention.output.dense.weight": a["out_kernel"].reshape(c, c).T,
            base + "attention.output.dense.bias": a["out_bias"],
            **_ln_out(b["norm1"], base + "layernorm_before"), **_ln_out(b["norm2"], base + "layernorm_after"),
            base + "intermediate.dense.weight": b["fc1"]["kernel"].T, base + "intermediate.dense.bias": b["fc1"]["bias"],
            base + "output.dense.weight": b["fc2"]["kernel"].T, base + "output.dense.bias": b["fc2"]["bias"]}


def import_state_dict(sd: dict, depths: tuple[int, ...], heads: tuple[int, ...]) -> dict:
    """Any supported SwinV2 state dict (Microsoft SwinV2 / SimMIM, HF Swinv2*) -> our params."""
    return hf_to_params(microsoft_to_hf(sd) if is_microsoft(sd) else sd, depths, heads)


def infer_arch(sd: dict) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(stage-1 width, blocks per stage, heads per stage) read off an HF-layout SwinV2 state dict."""
    sd = _strip_prefix(sd)
    embed = sd["embeddings.patch_embeddings.projection.weight"].shape[0]
    depths, heads = [], []
    while f"encoder.layers.{len(depths)}.blocks.0.attention.self.logit_scale" in sd:
        i = len(depths)
        heads.append(int(sd[f"encoder.layers.{i}.blocks.0.attention.self.logit_scale"].shape[0]))
        depths.append(sum(1 for k in sd if re.fullmatch(rf"encoder\.layers\.{i}\.blocks\.\d+\.layernorm_before\.weight",
                                                        k)))
    if not depths:
        raise ConfigError("SwinV2 weights: no encoder.layers.0.blocks.0 found; is this a SwinV2 checkpoint?")
    return int(embed), tuple(depths), tuple(heads)


def variant_of(embed: int, depths: tuple[int, ...], heads: tuple[int, ...]) -> str:
    """The SWINV2_SIZES name of an architecture, or a ConfigError naming the nearest."""
    from mim_jax.models.swinv2 import SWINV2_SIZES
    for name, s in SWINV2_SIZES.items():
        if (s.embed_dim, s.depths, s.heads) == (embed, depths, heads):
            return name
    raise ConfigError(f"SwinV2 weights: width {embed}, depths {depths}, heads {heads} is none of the sizes "
                      f"{sorted(SWINV2_SIZES)}; set model.variant to the nearest and model.width / model.heads")


def load_swinv2_file(path: str) -> tuple[str, dict]:
    """(variant, params) of a Microsoft SwinV2 / SimMIM .pth, an HF Swinv2 directory or a safetensors file."""
    from mim_jax.convert.checkpoint_files import read_checkpoint
    sd, _ = read_checkpoint(path)
    if is_microsoft(sd):
        sd = microsoft_to_hf(sd)
    embed, depths, heads = infer_arch(sd)
    return variant_of(embed, depths, heads), hf_to_params(sd, depths, heads)


def save_hf(params: dict, encoder, out_dir: str) -> str:
    """Write our SwinV2 params as an HF checkpoint (config.json + model.safetensors): Swinv2ForMaskedImageModeling
    when params hold the SimMIM head, else Swinv2Model."""
    import json

    from safetensors.numpy import save_file
    simmim = "head" in params
    sd = params_to_hf(params, prefix="swinv2." if simmim else "")
    config = {"model_type": "swinv2", "architectures": ["Swinv2ForMaskedImageModeling" if simmim else "Swinv2Model"],
              "image_size": encoder.image_size, "patch_size": encoder.patch_size, "num_channels": 3,
              "embed_dim": encoder.embed_dim, "depths": list(encoder.depths), "num_heads": list(encoder.heads),
              "window_size": encoder.window_size, "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_eps": 1e-5,
              "pretrained_window_sizes": list(encoder.pretrained_window_sizes or (0,) * len(encoder.depths)),
              "encoder_stride": encoder.output_stride, "use_absolute_embeddings": False}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()},
              os.path.join(out_dir, "model.safetensors"))
    return out_dir


def convert_to_hf(source: str, out_dir: str, image_size: int = 192, window_size: int = 12) -> str:
    """A Microsoft SwinV2 / SimMIM .pth, an HF Swinv2 dir or a SwinV2 pretraining run -> an HF checkpoint dir."""
    from mim_jax.models import swinv2
    if os.path.isfile(os.path.join(source, "config.json")) and os.path.isdir(os.path.join(source, "checkpoints")):
        import jax
        import ml_collections

        from mim_jax.parallel.sharding import logical_rules, make_mesh
        from mim_jax.train.runs import load_run
        mesh_cfg = ml_collections.ConfigDict({"shape": (1, 1, 1), "rules": ()})
        run_cfg, model, params, _ = load_run(source, make_mesh(mesh_cfg, jax.devices()[:1]), logical_rules(mesh_cfg))
        if not isinstance(getattr(model, "encoder", None), swinv2.SwinV2Encoder):
            raise ConfigError(f"--from={source!r} is a run of model.family={run_cfg.model.get('family', 'vit')!r}; "
                              f"--format=hf_swinv2 needs a SwinV2 run")
        variant, params, encoder = run_cfg.model.variant, jax.device_get(params), model.encoder
    else:
        variant, params = load_swinv2_file(source)
        s = swinv2.SWINV2_SIZES[variant]
        encoder = swinv2.SwinV2Encoder(s.embed_dim, s.depths, s.heads, image_size, s.patch_size, window_size)
    save_hf(params, encoder, out_dir)
    parts = "encoder + SimMIM head" if "head" in params else "encoder"
    return (f"{source} -> {out_dir} (HF Swinv2): {variant}, {parts}, {encoder.image_size} px, window "
            f"{encoder.window_size}")
