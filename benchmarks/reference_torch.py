"""Reference (c), as written in the team's shared bench: the near-limit on this machine, a plain PyTorch
loop with no pipeline engine at all.
DataLoader workers decode (PIL, draft mode) and resize to 256 / center-crop 224; the main process runs
AlexNet in inference mode, channels_last. Prints images/s.

Usage: python reference_torch.py IMG_DIR STATE_DICT [WORKERS] [BATCH] [fp32|bf16]
"""
import glob
import sys
import time

import torch
import torchvision
from PIL import Image
from torchvision import transforms

T = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class DS(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        im = Image.open(self.files[i])
        im.draft("RGB", (256, 256))
        return T(im.convert("RGB"))


def main():
    d, sd = sys.argv[1:3]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    bs = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    bf16 = len(sys.argv) > 5 and sys.argv[5] == 'bf16'
    files = sorted(glob.glob(d + "/*.jpg"))
    m = torchvision.models.alexnet(num_classes=1000)
    m.load_state_dict(torch.load(sd))
    m = m.eval().to(memory_format=torch.channels_last)
    dl = torch.utils.data.DataLoader(DS(files), batch_size=bs, num_workers=workers)
    t0 = time.time()
    n = 0
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        for x in dl:
            m(x.contiguous(memory_format=torch.channels_last)).softmax(1).topk(5)
            n += x.shape[0]
    dt = time.time() - t0
    print(f"limit_torch: {n} images in {dt:.1f}s = {n / dt:.1f} images/s "
          f"(threads={torch.get_num_threads()}, bf16={bf16})")


if __name__ == "__main__":
    main()
