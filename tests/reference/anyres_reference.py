"""Reference vectors for LLaVA-NeXT's AnyRes token counts (tests/models/test_anyres.cpp).

Written independently of mllm from the published code of huggingface/transformers at commit
81bb907ccf3494b5409b0b745bb10c8a617050b7: select_best_resolution in
src/transformers/image_processing_utils.py, and LlavaNextProcessor._get_number_of_features /
_get_unpadded_features in src/transformers/models/llava_next/processing_llava_next.py (what the
processor expands each <image> into). Plain Python, no dependencies:

    /usr/bin/python3 tests/reference/anyres_reference.py > tests/fixtures/anyres/vectors.json
"""
import json


def best_resolution(size, pinpoints):
    oh, ow = size
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        s = min(w / ow, h / oh)
        eff = min(int(ow * s) * int(oh * s), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (h, w), eff, waste
    return best


def tokens(size, pinpoints, tile, patch, extra):
    oh, ow = size
    bh, bw = best_resolution(size, pinpoints)
    sh, sw = bh // tile, bw // tile
    ph = pw = tile // patch
    cur_h, cur_w = ph * sh, pw * sw
    if ow / oh > cur_w / cur_h:
        pad = (cur_h - (oh * cur_w) // ow) // 2
        cur_h -= 2 * pad
    else:
        pad = (cur_w - (ow * cur_h) // oh) // 2
        cur_w -= 2 * pad
    # unpadded grid + a newline per row + the base image (+ CLS when kept)
    return [bh, bw], [sh, sw], cur_h * cur_w + cur_h + ph * pw + extra


PINPOINT_SETS = {
    "llava-v1.6": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "shapes": [[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]],
}
CASES = [  # (pinpoints, tile, patch, extra, [(height, width), ...])
    ("llava-v1.6", 336, 14, 0, [(336, 336), (480, 640), (640, 480), (1080, 1920), (1920, 1080),
                                (100, 1000), (1000, 100), (500, 500), (333, 999), (2000, 2000),
                                (224, 224), (768, 1024), (17, 23), (672, 672), (336, 1008)]),
    ("llava-v1.6", 336, 14, 1, [(480, 640), (1080, 1920)]),
    ("shapes", 64, 8, 0, [(64, 64), (96, 128), (128, 96), (200, 60), (60, 200), (128, 128),
                          (150, 151), (33, 65)]),
]

def main():
    out = []
    for name, tile, patch, extra, sizes in CASES:
        for size in sizes:
            best, grid, n = tokens(size, PINPOINT_SETS[name], tile, patch, extra)
            out.append({"pinpoints": PINPOINT_SETS[name], "tile": tile, "patch": patch, "cls": extra,
                        "height": size[0], "width": size[1], "best": best, "grid": grid, "tokens": n})
    print(json.dumps({"source": "transformers 81bb907ccf3494b5409b0b745bb10c8a617050b7", "cases": out},
                     indent=1))


if __name__ == "__main__":
    main()
