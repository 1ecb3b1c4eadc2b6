"""Training and evaluation batches streamed from WebDataset shards (schemas.shards), on disk or gs://, and the
functions that take either shards or folders' samples (image_set, train_batches, eval_batches).

Loose files cost one object read each, and object stores answer in tens of milliseconds: a GPU would wait on
latency. A shard is one sequential read of about 256 MB, so a DataLoader worker streams images as fast as it
decodes them.

Each epoch (a function of the seed and the epoch alone, so any run, resumed or not, sees the same batches):
- the shard order is shuffled; process r of `world` takes every world-th shard, and its DataLoader worker w of W
  every W-th of those;
- a worker streams its shards' samples through a shuffle buffer (`buffer` samples, seeded) and cuts batches of its
  process's share of the global batch; each sample's augmentation draws from a seed the buffer hands it;
- every process takes the same number of steps: floor(M / share), M the fewest samples any process can be dealt
  (the floor(K / world) smallest of K shards; all samples with one process). Batches past that wait for a later
  epoch, whose shard order differs. A sample the index promised but the shard did not hold (a truncated shard) or
  that does not decode is counted as unreadable, as in folders, and keeps its place so every count holds.

The DataLoader returns its workers' batches in turn, so the plan knows which worker makes each step. A resume at
step k replays each worker's stream from the epoch's start, skipping (unread, undecoded) the batches of the first k
steps, and starts the turns at the worker of step k: the rest of the epoch is exactly what an uninterrupted run
would see, batch for batch, provided --workers and the process count are the ones the run started with. Skipping
re-reads the bytes of the shards' first part, not their decode: up to an epoch's reads on a resume late in it.
"""
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from schemas.shards import Sample, ShardError, ShardSet, is_shard_set, open_shard_set, read_shard
from schemas.transform import Preprocess, eval_tensor_from_bytes
from trainer.data import EpochSampler, class_differences, collate, eval_loader, list_image_folder, loader, train_tensor

BUFFER = 2_000  # samples per worker's shuffle buffer: ~2 shards' mixing at ImageNet sizes, ~220 MB of JPEG bytes


@dataclass(frozen=True)
class WorkerPlan:
    worker: int   # which of the process's workers, whichever DataLoader worker runs it
    shards: list  # schemas.shards.Shard, in reading order
    batches: int  # how many this worker makes this epoch
    skip: int     # of which the first `skip` were done before a resume


class ShardStream(torch.utils.data.IterableDataset):
    """One process's training batches (uint8 images, labels, unreadable count) of a shard set, epoch by epoch."""

    def __init__(self, shard_set: ShardSet, transform, min_side: int, batch_size: int, seed: int, workers: int,
                 rank: int = 0, world: int = 1, buffer: int = BUFFER):
        if len(shard_set.shards) < world:
            raise ShardError(f"{len(shard_set.shards)} training shards cannot feed {world} processes; write at least "
                             f"{world} (a smaller --shard-size)")
        self.shard_set, self.transform, self.min_side, self.seed = shard_set, transform, min_side, seed
        self.workers, self.rank, self.world, self.buffer = max(1, workers), rank, world, buffer
        self.share = len(range(rank, batch_size, world))  # this process's part of each global batch
        fewest = sum(sorted(s.count for s in shard_set.shards)[:len(shard_set.shards) // world])
        self.steps = fewest // math.ceil(batch_size / world)  # the largest share sets it: the same on every process
        if not self.steps:
            raise ShardError(f"{shard_set.count} training samples make no batch of {batch_size} over {world} "
                             "processes; lower --batch-size")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate `epoch`'s batches from its `start`-th on (the loader's workers start anew each epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps - self.start

    def plans(self) -> list[WorkerPlan]:
        """Each worker's shards, batches and skip this epoch, in the order the DataLoader's workers take turns."""
        order = torch.randperm(len(self.shard_set.shards), generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.epoch)).tolist()
        mine = [self.shard_set.shards[i] for i in order[self.rank::self.world]]
        dealt = [mine[w::self.workers] for w in range(self.workers)]
        made = [math.ceil(sum(s.count for s in shards) / self.share) for shards in dealt]
        turns = list(round_robin(made, self.steps))
        batches = [turns.count(w) for w in range(self.workers)]
        skip = [turns[:self.start].count(w) for w in range(self.workers)]
        plans = [WorkerPlan(w, dealt[w], batches[w], skip[w]) for w in range(self.workers)]
        first = turns[self.start] if self.start < len(turns) else 0
        return plans[first:] + plans[:first]  # DataLoader worker 0 makes step `start`

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        plan = self.plans()[info.id if info else 0]
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{plan.worker}")
        samples = shuffled(promised(plan.shards), self.buffer, rng)
        for n in range(plan.batches):
            batch = list(itertools.islice(samples, self.share))  # the last may be short
            if n >= plan.skip:
                yield collate([self.decode(item) for item in batch])

    def decode(self, item: tuple[Sample | None, int]):
        sample, seed = item
        if sample is None:
            return None
        return train_tensor(sample.image, sample.label_index, self.transform, self.min_side, seed)


def round_robin(made: list[int], steps: int) -> Iterator[int]:
    """The worker of each of the first `steps` batches, when workers that made made[w] batches take turns, as a
    DataLoader's do (an exhausted worker drops out of the turns)."""
    given = 0
    for turn in range(max(made, default=0)):
        for w, count in enumerate(made):
            if turn < count:
                if given == steps:
                    return
                given += 1
                yield w


def promised(shards: list) -> Iterator[Sample | None]:
    """The shards' samples, exactly as many as their index counts: None for each the shard did not hold."""
    for shard in shards:
        got = 0
        for sample in read_shard(shard.url):
            if got == shard.count:
                break
            got += 1
            yield sample
        yield from [None] * (shard.count - got)


def shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator[tuple[Sample | None, int]]:
    """(sample, augmentation seed) pairs, drawn at random from a buffer of `size` that the stream keeps full."""
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            yield _draw(buffer, rng)
    while buffer:
        yield _draw(buffer, rng)


def _draw(buffer: list, rng: random.Random) -> tuple[Sample | None, int]:
    i = rng.randrange(len(buffer))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop(), rng.getrandbits(62)


class ShardEval(torch.utils.data.IterableDataset):
    """Eval batches (the labeling pipeline's tensors, or TenCrop's views) and labels: this process's part, in order.

    Processes split the shards, or the samples when there are fewer shards than processes (a small val set);
    workers split a process's shards."""

    def __init__(self, shard_set: ShardSet, pre: Preprocess, batch_size: int, rank: int = 0, world: int = 1,
                 limit: int | None = None):
        self.shard_set, self.pre, self.batch_size, self.rank, self.world = shard_set, pre, batch_size, rank, world
        self.limit = limit

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        by_shard = len(self.shard_set.shards) >= self.world
        shards = self.shard_set.shards[self.rank::self.world] if by_shard else self.shard_set.shards
        samples = promised(shards[w::workers])
        if not by_shard:
            samples = (s for i, s in enumerate(samples) if i % self.world == self.rank)
        if self.limit is not None:  # the first `limit` of the set, about evenly from each worker's part
            samples = itertools.islice(samples, math.ceil(self.limit / workers))
        batch = []
        for sample in samples:
            batch.append(self.decode(sample))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)

    def decode(self, sample: Sample | None):
        try:
            return (eval_tensor_from_bytes(sample.image, self.pre)[0], sample.label_index) if sample else None
        except Exception:  # a broken image costs one sample, as in folders
            return None


def shard_loader(dataset: torch.utils.data.IterableDataset, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over a dataset that makes whole batches. Workers are not kept between epochs: each epoch's
    iterator copies the stream's epoch and start into fresh ones. Its own generator seeds them, so an epoch's start
    draws nothing from torch's global RNG, which last.pt saves (trainer.data.loader does the same)."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available())


Images = list[tuple[str, int]] | ShardSet  # (uri, label index) samples of folders or manifests, or shards


def image_set(url: str, class_names: list[str] | None = None,
              owner: str = "the training data") -> tuple[list[str], Images]:
    """Classes and images of a class-folder tree, or of shards (a folder with an index, or a pattern).

    Shards name classes by index, so a val shard set must list the training classes in the same order; a
    folder tree may hold a subset of them (trainer.data.list_image_folder)."""
    if not is_shard_set(url):
        return list_image_folder(url, class_names, owner)
    shard_set = open_shard_set(url)
    if class_names and shard_set.classes != class_names:
        differences = class_differences(shard_set.classes, class_names) or "the same classes in another order"
        raise ShardError(f"the classes of {url} differ from {owner}'s: {differences}; write both sets in one "
                         "`alexlabel shards` run")
    return shard_set.classes, shard_set


def image_count(images: Images) -> int:
    return images.count if isinstance(images, ShardSet) else len(images)


def train_batches(images: Images, transform, min_side: int, batch_size: int, seed: int, workers: int,
                  rank: int = 0, world: int = 1) -> tuple[EpochSampler | ShardStream, torch.utils.data.DataLoader, int]:
    """What sets the epoch (set_epoch(epoch, start)), the loader, and the steps per epoch, for folders or shards."""
    if isinstance(images, ShardSet):
        stream = ShardStream(images, transform, min_side, batch_size, seed, workers, rank, world)
        return stream, shard_loader(stream, workers), stream.steps
    sampler = EpochSampler(len(images), seed, batch_size, rank, world)
    return (sampler, loader(images, transform, min_side, batch_size, workers, sampler),
            math.ceil(len(images) / batch_size))


def eval_batches(images: Images, pre: Preprocess, batch_size: int, workers: int, rank: int = 0, world: int = 1,
                 limit: int | None = None) -> torch.utils.data.DataLoader:
    """Evaluation batches of this process's part of folders' samples or of shards (the first `limit` only)."""
    if isinstance(images, ShardSet):
        return shard_loader(ShardEval(images, pre, batch_size, rank, world, limit), workers)
    return eval_loader(images[rank::world][:limit], pre, batch_size, workers)
