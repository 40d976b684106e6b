#!/usr/bin/python3
"""Reference image preprocessing for tests/data/test_image_parity.cpp.

Runs the CLIP preprocessing users train with — torchvision Resize(size, BICUBIC) + CenterCrop(size)
on a PIL image converted to RGB (for aspect=pad, after LLaVA-1.5's expand2square with the mean
colour; for aspect=resize, Resize((size, size), BICUBIC)) — then ToTensor and Normalize with CLIP's
mean/std, and writes the (3, size, size) float32 tensor as raw little-endian bytes.

With "anyres" and a JSON list of [height, width] pinpoints, LLaVA-NeXT's processing as
transformers' LlavaNextImageProcessor does it (commit 81bb907c, image_processing_llava_next.py:
select_best_resolution, resize_for_patching, _pad_for_patching, divide_to_patches; the base image
resized to SIZE x SIZE first): writes the (1 + tiles, 3, SIZE, SIZE) crops.

usage: image_reference.py IMAGE SIZE pad|crop|resize OUT.bin
       image_reference.py IMAGE SIZE anyres OUT.bin '[[h, w], ...]'
"""
import json
import math
import sys

from PIL import Image
import numpy as np
from torchvision import transforms

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def expand2square(img, background):
    # LLaVA-1.5 (llava/mm_utils.py): centre the image on a square canvas of the background colour.
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


from anyres_reference import best_resolution  # noqa: E402 (this folder's script)


def anyres(img, size, pinpoints):
    w, h = img.size
    th, tw = best_resolution((h, w), pinpoints)
    sw, sh = tw / w, th / h
    if sw < sh:
        nw, nh = tw, min(math.ceil(h * sw), th)
    else:
        nh, nw = th, min(math.ceil(w * sh), tw)
    resized = img.resize((nw, nh), resample=Image.BICUBIC)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
    crops = [img.resize((size, size), resample=Image.BICUBIC)]
    for y in range(0, th, size):
        for x in range(0, tw, size):
            crops.append(canvas.crop((x, y, x + size, y + size)))
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return np.stack([norm(c).numpy() for c in crops])


def main():
    path, size, aspect, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    img = Image.open(path).convert("RGB")
    if aspect == "anyres":
        t = anyres(img, size, json.loads(sys.argv[5]))
        np.ascontiguousarray(t, dtype="<f4").tofile(out)
        return
    if aspect == "pad":
        img = expand2square(img, tuple(int(x * 255) for x in MEAN))
    if aspect == "resize":
        resize = [transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC)]
    else:
        resize = [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                  transforms.CenterCrop(size)]
    t = transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])(img)
    np.ascontiguousarray(t.numpy(), dtype="<f4").tofile(out)


if __name__ == "__main__":
    main()
