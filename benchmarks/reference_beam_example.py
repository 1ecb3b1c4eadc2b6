"""Reference (b), as written in the team's shared bench: Beam's own pytorch_image_classification example,
rebuilt the way it is written
(paths from a text file, PIL decode, squash to 224x224, KeyedModelHandler(PytorchModelHandlerTensor),
'path,argmax' text output), pointed at AlexNet. Prints images/s over the whole pipeline run.

Usage: python reference_beam_example.py PATHS_TXT STATE_DICT OUT_PREFIX [extra beam args...]
"""
import sys
import time

import apache_beam as beam
import torch
import torchvision
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image
from torchvision import transforms

NORM = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def read_image(path):
    with FileSystems().open(path, "r") as f:
        data = Image.open(f).convert("RGB")
    return path, data


def preprocess_image(data):
    t = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), NORM])
    return t(data)


class PostProcessor(beam.DoFn):
    def process(self, element):
        filename, result = element
        yield filename + "," + str(torch.argmax(result.inference, dim=0).item())


def main():
    paths, sd, out = sys.argv[1:4]
    opts = PipelineOptions(sys.argv[4:])
    handler = KeyedModelHandler(PytorchModelHandlerTensor(
        state_dict_path=sd, model_class=torchvision.models.alexnet, model_params={"num_classes": 1000}))
    t0 = time.time()
    with beam.Pipeline(options=opts) as p:
        n = (p | "ReadPaths" >> beam.io.ReadFromText(paths)
               | "Read" >> beam.Map(read_image)
               | "Pre" >> beam.MapTuple(lambda k, img: (k, preprocess_image(img)))
               | "Infer" >> RunInference(handler)
               | "Post" >> beam.ParDo(PostProcessor()))
        n | "Write" >> beam.io.WriteToText(out, num_shards=1)
    dt = time.time() - t0
    count = sum(1 for _ in open(paths))
    print(f"peer_beam_example: {count} images in {dt:.1f}s = {count / dt:.1f} images/s")


if __name__ == "__main__":
    main()
