"""Reference vectors for LLaVA-NeXT's packing of AnyRes image features (tests/models/test_anyres_model.cpp).

Written independently of mllm from the published code of huggingface/transformers at commit
81bb907ccf3494b5409b0b745bb10c8a617050b7, src/transformers/models/llava_next/modeling_llava_next.py:
get_anyres_image_grid_shape, unpad_image and LlavaNextForConditionalGeneration.pack_image_features
with vision_feature_select_strategy "default" and mm_patch_merge_type "spatial_unpad". The
features and image_newline are seeded random values; the packed result is what the model splices
in for each image. Debian's python3-torch:

    /usr/bin/python3 tests/reference/anyres_pack_reference.py > tests/fixtures/anyres/pack.json
"""
import json
import math

import torch


from anyres_reference import best_resolution  # noqa: E402 (this folder's script)


def grid_shape(size, pinpoints, tile):  # get_anyres_image_grid_shape
    h, w = best_resolution(size, pinpoints)
    return h // tile, w // tile


def unpad_image(tensor, original_size):  # (C, H, W)
    oh, ow = original_size
    ch, cw = tensor.shape[1:]
    if ow / oh > cw / ch:
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return tensor[:, pad:ch - pad, :]
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return tensor[:, :, pad:cw - pad]


def pack(features, sizes, pinpoints, tile, newline):
    out = []
    for feat, size in zip(features, sizes):
        base, rest = feat[0], feat[1:]
        side = int(math.isqrt(feat.shape[1]))
        gh, gw = grid_shape(size, pinpoints, tile)
        x = rest.view(gh, gw, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
        x = x.flatten(1, 2).flatten(2, 3)
        x = unpad_image(x, size)
        x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
        x = x.flatten(1, 2).transpose(0, 1)
        out.append(torch.cat((base, x), dim=0))
    return out


PINPOINTS = [[8, 16], [16, 8], [16, 16], [24, 8], [8, 24]]
TILE, SIDE, C = 8, 2, 4
SIZES = [(8, 8), (30, 61), (61, 30), (100, 33), (7, 40), (50, 50), (13, 17)]
g = torch.Generator().manual_seed(0)
newline = torch.randn(C, generator=g, dtype=torch.float64)
cases = []
features = []
for size in SIZES:
    gh, gw = grid_shape(size, PINPOINTS, TILE)
    features.append(torch.randn(1 + gh * gw, SIDE * SIDE, C, generator=g, dtype=torch.float64))
packed = pack(features, SIZES, PINPOINTS, TILE, newline)
for size, f, p in zip(SIZES, features, packed):
    cases.append({"height": size[0], "width": size[1], "features": f.tolist(), "packed": p.tolist()})
print(json.dumps({"source": "transformers 81bb907ccf3494b5409b0b745bb10c8a617050b7",
                  "pinpoints": PINPOINTS, "tile": TILE, "side": SIDE, "hidden": C,
                  "newline": newline.tolist(), "cases": cases}))
