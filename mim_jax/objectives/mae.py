"""MAE (He et al. 2022): mask 75% of the patches, encode the visible ones, decode all, MSE on masked pixels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mim_jax.config.validation import positive_int, require
from mim_jax.data.transforms import normalize
from mim_jax.models import flops
from mim_jax.models.mae import MAE, Decoder, num_visible
from mim_jax.models.vit import encoder_from_config, layers_per_scan, resolve_dims
from mim_jax.objectives.base import ENCODER_EVALUATORS, Objective
from mim_jax.objectives.targets import mae_pixel_loss

IMAGE_CHANNELS = 3


def config_block() -> ml_collections.ConfigDict:
    """config.mae: masking, target and decoder of MAE (also read by mae_teacher)."""
    b = ml_collections.ConfigDict()
    b.mask_ratio = 0.75
    b.norm_pix_loss = True            # pixel targets standardized per patch (MAE's norm_pix_loss)
    b.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, heads=16, mlp_ratio=4))
    return b


def build_mae(config, out_dim: int = 0, unroll: bool = False) -> MAE:
    """The MAE of `config`; the decoder predicts `out_dim` per token (0: p*p*3 pixels)."""
    encoder = encoder_from_config(config.model, unroll=unroll)
    dec = config.mae.decoder
    decoder = Decoder(width=dec.width, depth=dec.depth, heads=dec.heads, mlp_dim=dec.mlp_ratio * dec.width,
                      grid_size=encoder.grid_size, out_dim=out_dim or encoder.patch_size ** 2 * IMAGE_CHANNELS,
                      remat=config.model.remat, dtype=encoder.dtype, attention=encoder.attention,
                      scan_unroll=layers_per_scan(config.model, dec.depth, unroll))
    return MAE(encoder=encoder, decoder=decoder, mask_ratio=config.mae.mask_ratio)


def num_patches(model: MAE) -> int:
    """Tokens per image (without CLS)."""
    return model.encoder.grid_size ** 2


def init_inputs(model: MAE, config) -> tuple:
    """(images [1, S, S, 3], noise [1, L]) for model.init."""
    size = model.encoder.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, num_patches(model)), jnp.float32)


def sample_noise(model: MAE, config, key: jax.Array, batch_size: int) -> dict:
    """{'noise': uniform [B, L]}: argsort ranks pick each image's visible patches."""
    return {"noise": jax.random.uniform(key, (batch_size, num_patches(model)), jnp.float32)}


def apply_kwargs(config, rng: jax.Array) -> dict:
    """model.apply keyword arguments for a training forward: drop path needs train=True and a 'dropout' rng."""
    return {"train": True, "rngs": {"dropout": rng}} if config.model.get("drop_path", 0.0) > 0 else {}


def make_loss(model: MAE, config, frozen=None):
    """loss(params, batch, rng, frozen_params) -> (MSE on masked (norm-)pixel patches, {})."""
    norm_pix = config.mae.norm_pix_loss

    def loss(params, batch, rng, frozen_params=None):
        x = normalize(batch["image"])
        outputs = model.apply({"params": params}, x, batch["noise"], **apply_kwargs(config, rng))
        return mae_pixel_loss(outputs, x, model.encoder.patch_size, norm_pix), {}
    return loss


def forward_flops_breakdown(config, out_dim: int = 0) -> dict[str, float]:
    """Forward FLOPs per example of the MAE of `config` by part; `out_dim` = decoder outputs (0: pixels).

    Encoder: patch embed on all N patches (masking follows it), blocks on 1+K tokens; decoder: embed on
    1+K tokens, blocks and the prediction head on 1+N tokens (the CLS row is predicted, then dropped).
    """
    dims = resolve_dims(config.model)
    n = (config.model.image_size // dims["patch_size"]) ** 2
    patch_dim = dims["patch_size"] ** 2 * IMAGE_CHANNELS
    enc_tokens, dec_tokens = 1 + num_visible(n, config.mae.mask_ratio), 1 + n
    dec = config.mae.decoder
    return {
        "patch_embed": flops.matmul_flops(n, dims["width"], patch_dim),
        "encoder_blocks": dims["depth"] * flops.block_forward_flops(dims["width"], dims["mlp_dim"], enc_tokens),
        "decoder_embed": flops.matmul_flops(enc_tokens, dec.width, dims["width"]),
        "decoder_blocks": dec.depth * flops.block_forward_flops(dec.width, int(dec.mlp_ratio * dec.width),
                                                                dec_tokens),
        "decoder_pred": flops.matmul_flops(dec_tokens, out_dim or patch_dim, dec.width),
    }


def flops_per_example(config) -> float:
    """Train FLOPs per example: 3x the MAE forward."""
    return 3.0 * sum(forward_flops_breakdown(config).values())


def validate_block(config) -> None:
    """Check config.mae (shared with mae_teacher)."""
    m = config.mae
    require(0.0 < m.mask_ratio < 1.0, "mae.mask_ratio", m.mask_ratio, "must lie in (0, 1), e.g. 0.75")
    for name in ("width", "depth", "heads", "mlp_ratio"):
        positive_int(m, f"decoder.{name}", "mae.")
    require(m.decoder.width % m.decoder.heads == 0, "mae.decoder.width", m.decoder.width,
            f"must be divisible by mae.decoder.heads={m.decoder.heads}")


def validate(config, check_paths: bool = True) -> None:
    """Check the fields MAE reads beyond the shared ones."""
    validate_block(config)


def signature(config) -> dict:
    """The decoder fixes parameter shapes besides config.model."""
    return {"mae": {"decoder": config.mae.decoder.to_dict()}}


OBJECTIVE = Objective(
    name="mae", build_model=lambda config, unroll=False: build_mae(config, unroll=unroll), init_inputs=init_inputs,
    sample=sample_noise, make_loss=make_loss, flops_per_example=flops_per_example, validate=validate,
    config_blocks={"mae": config_block}, evaluators=ENCODER_EVALUATORS | {"recon_loss"}, signature=signature,
    description="MAE with (normalized) pixel targets (He et al. 2022)")
