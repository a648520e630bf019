"""SAM architectures as data, and the one builder that turns any of them into a model.

Every size lives here and only here (as in `segment_anything/build_sam.py`): vit_b/l/h differ only by depth,
width, heads and global-attention indexes; `tiny` keeps vit_b's module tree and key names (12 blocks, global
attention at 2, 5, 8, 11, the same prompt encoder and mask decoder) at a width that trains on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING

from search.errors import CheckpointError
from service.errors import unknown_name
from service.imaging import PIXEL_MEAN, PIXEL_STD

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class SamArchitecture:
    """The hyperparameters that distinguish one SAM size from another."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding (64 for the real sizes)."""
        return self.image_size // self.patch_size


ARCHITECTURES: dict[str, SamArchitecture] = {
    arch.name: arch
    for arch in (
        SamArchitecture("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        SamArchitecture("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        SamArchitecture("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
        SamArchitecture(
            "tiny",
            encoder_embed_dim=64,
            encoder_depth=12,
            encoder_num_heads=4,
            encoder_global_attn_indexes=(2, 5, 8, 11),
            image_size=128,
            patch_size=8,
            window_size=4,
            prompt_embed_dim=32,
            mask_in_chans=4,
            decoder_mlp_dim=128,
            decoder_num_heads=2,
            iou_head_hidden_dim=32,
        ),
    )
}


def get_architecture(name: str) -> SamArchitecture:
    """The architecture called `name`; an unknown name fails listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise CheckpointError(unknown_name("SAM architecture", name, ARCHITECTURES)) from None


def build_sam(arch: SamArchitecture | str, device: torch.device | str = "cpu") -> Sam:
    """A randomly initialised SAM of `arch` built from segment_anything's own modules, in eval mode.

    torch and segment_anything load here, on the first model built, not with this module: the commands that only
    read the architectures as data (a configuration's validation, `medsamix methods`) start without them."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    arch = get_architecture(arch) if isinstance(arch, str) else arch
    grid = arch.embedding_size
    with torch.device(device):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=arch.encoder_depth,
                embed_dim=arch.encoder_embed_dim,
                img_size=arch.image_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=arch.encoder_num_heads,
                patch_size=arch.patch_size,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=arch.encoder_global_attn_indexes,
                window_size=arch.window_size,
                out_chans=arch.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=arch.prompt_embed_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(arch.image_size, arch.image_size),
                mask_in_chans=arch.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2,
                    embedding_dim=arch.prompt_embed_dim,
                    mlp_dim=arch.decoder_mlp_dim,
                    num_heads=arch.decoder_num_heads,
                ),
                transformer_dim=arch.prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=arch.iou_head_hidden_dim,
            ),
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )
    return sam.eval()


@dataclass(frozen=True)
class StateLayout:
    """Key -> shape of an architecture's state dict, split into learned parameters and buffers."""

    parameters: dict[str, tuple[int, ...]]
    buffers: dict[str, tuple[int, ...]]

    @property
    def all(self) -> dict[str, tuple[int, ...]]:
        return {**self.parameters, **self.buffers}


@cache
def state_layout(arch: SamArchitecture | str) -> StateLayout:
    """The exact keys and shapes a checkpoint of `arch` must hold (built on the meta device: no memory)."""
    sam = build_sam(arch, device="meta")
    parameters = {name: tuple(p.shape) for name, p in sam.named_parameters()}
    state = sam.state_dict()
    buffers = {name: tuple(t.shape) for name, t in state.items() if name not in parameters}
    return StateLayout(parameters=parameters, buffers=buffers)


def identify(shapes: dict[str, tuple[int, ...]]) -> SamArchitecture | None:
    """The architecture whose distinguishing shapes match `shapes`, or None.

    Looks only at the tensors that differ between sizes (patch embedding, positional embedding, depth, neck);
    the full key and shape check is `checkpoints.validate_state_dict`'s job.
    """
    patch = shapes.get("image_encoder.patch_embed.proj.weight")
    pos = shapes.get("image_encoder.pos_embed")
    neck = shapes.get("image_encoder.neck.0.weight")
    if patch is None or pos is None or neck is None or len(patch) != 4 or len(pos) != 4:
        return None
    depth = 1 + max((int(k.split(".")[2]) for k in shapes if k.startswith("image_encoder.blocks.")), default=-1)
    for arch in ARCHITECTURES.values():
        if (
            patch[0] == arch.encoder_embed_dim
            and patch[2] == arch.patch_size
            and pos[1] == arch.embedding_size
            and neck[0] == arch.prompt_embed_dim
            and depth == arch.encoder_depth
        ):
            return arch
    return None
