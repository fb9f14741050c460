"""grain input pipelines: infinite augmented train batches and padded one-pass eval batches.

Determinism: global example index i = s * B + k (step s, position k in the global batch of B)
walks an infinite sequence of epochs, each a seeded permutation of the split that differs per
epoch (grain's `shuffle` folds the epoch into its seed when followed by `repeat`). Augmentation
randomness is keyed by i as well (`random_map` sits on the global-index dataset), so batch s and its
augmentation depend only on (seed, s). Process p of P loads positions [p*B/P, (p+1)*B/P) of every
global batch: the global sequence is cut into chunks of B/P and process p takes chunks
s*P + p, which is also what makes resuming at `start_step` free.

Label sets (multi-label datasets, `mim_jax.data.records` v2): with `max_labels` > 0 (config
`data.max_labels`) every train and eval example also carries ``labels`` int32 [max_labels], its label
set in record order padded with -1; a set longer than max_labels keeps its first max_labels ids
(`train_batches` logs how many records of the split that cuts, `sources.num_truncated`). A padded id
list scales where a dense host multi-hot does not (28K classes x 8192 images = 229M floats a step): the
objective makes the multi-hot on device. Single-label records give one-element sets.

A training subset (`mim_jax.data.subsets`, config `data.subset`) is a fixed list of record indices
chosen by key hash before the shuffle, so the same rules hold on the subset. Sources are mim_jax
dataset directories or TFDS array_record directories (`mim_jax.data.sources`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from mim_jax.data import randaugment, records, sources, subsets, transforms

Batch = dict[str, np.ndarray]
Element = bytes | dict[str, Any]  # msgpack record bytes (mim_jax datasets) or an example dict (TFDS).
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2
LABEL_PAD = -1  # fills `labels` past the end of a label set


def as_record(element: Element) -> dict[str, Any]:
    """{'image': bytes, 'label': int, 'labels': list[int], ...} from a source element of either kind."""
    if isinstance(element, (bytes, bytearray)):
        return records.decode_record(element)
    label = int(element.get("label", 0))
    return {"image": element["image"], "label": label, "labels": [label] if "label" in element else []}


def padded_labels(labels: Sequence[int], max_labels: int) -> np.ndarray:
    """int32 [max_labels]: the first max_labels ids of a label set, padded with -1."""
    out = np.full(max_labels, LABEL_PAD, np.int32)
    kept = list(labels)[:max_labels]
    out[:len(kept)] = kept
    return out


def label_fields(record: dict[str, Any], max_labels: int) -> dict[str, np.ndarray]:
    """The label entries of one example: 'label', plus the padded 'labels' when max_labels > 0."""
    fields = {"label": np.int32(record["label"])}
    if max_labels > 0:
        fields["labels"] = padded_labels(record["labels"], max_labels)
    return fields


def batch_shapes(batch_size: int, image_size: int, max_labels: int = 0, mask: bool = False) -> dict[str, tuple]:
    """{key: (shape, dtype)} of a batch of `batch_size` as the pipelines yield it (for abstract batches)."""
    shapes = {"image": ((batch_size, image_size, image_size, 3), np.uint8), "label": ((batch_size,), np.int32)}
    if max_labels > 0:
        shapes["labels"] = ((batch_size, max_labels), np.int32)
    if mask:
        shapes["mask"] = ((batch_size,), np.bool_)
    return shapes


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Record bytes -> {'image': uint8 HWC random-resized-cropped, flipped (and RandAugmented), 'label': int32}.

    `use_opencv=False` forces the PIL reference path (same crop boxes and flips, pixels within ~1 level).
    """

    image_size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rand_augment: randaugment.RandAugmentSpec | None = None  # applied after crop + flip when set
    use_opencv: bool = True
    max_labels: int = 0  # > 0: also 'labels' int32 [max_labels], the label set padded with -1

    def random_map(self, element: Element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Decodes and augments one record with `rng` (a JPEG decodes at reduced scale when the crop allows)."""
        record = as_record(element)
        image = transforms.open_image(record["image"])
        box = transforms.sample_crop_box(image.width, image.height, self.crop_scale, self.crop_ratio, rng)
        pixels = transforms.decode_resized_crop(image, record["image"], box, self.image_size, self.use_opencv)
        pixels = transforms.random_flip_array(pixels, rng)
        if self.rand_augment is not None:
            pixels = randaugment.rand_augment_array(pixels, self.rand_augment, rng)
        return {"image": pixels, **label_fields(record, self.max_labels)}


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """Record bytes -> {'image': uint8 HWC centre crop, 'label': int32, 'mask': True} (and 'labels')."""

    image_size: int
    crop_pct: float = 0.875
    use_opencv: bool = True
    max_labels: int = 0

    def map(self, element: Element) -> dict[str, np.ndarray]:
        """Decodes (at reduced scale when the resize allows) and centre-crops one record."""
        record = as_record(element)
        image = transforms.open_image(record["image"])
        pixels = transforms.decode_center_crop(image, record["image"], self.image_size, self.crop_pct,
                                               self.use_opencv)
        return {"image": pixels, **label_fields(record, self.max_labels), "mask": np.bool_(True)}


@dataclasses.dataclass(frozen=True)
class PaddingExample(grain.transforms.Map):
    """Any element -> an all-zero example with mask False, to fill the last eval batch."""

    image_size: int
    max_labels: int = 0

    def map(self, element: int) -> dict[str, np.ndarray]:
        """Returns the padding example (label 0, labels all -1)."""
        del element
        return {"image": np.zeros((self.image_size, self.image_size, 3), np.uint8),
                **label_fields({"label": 0, "labels": []}, self.max_labels), "mask": np.bool_(False)}


def num_examples(dataset_dir: str, split: str) -> int:
    """Number of examples in `split`, from metadata.json (or the TFDS dataset info)."""
    return sources.num_examples(dataset_dir, split)


def num_classes(dataset_dir: str) -> int:
    """Number of classes of the dataset, from metadata.json (or the TFDS dataset info)."""
    return len(sources.class_names(dataset_dir))


def training_source(dataset_dir: str, split: str, subset: subsets.SubsetSpec | None = None) -> Sequence:
    """The random-access source of `split`, restricted to `subset` (nested, by key hash) when given."""
    source = sources.open_split(dataset_dir, split)
    if subset is None or subset.kind == "all":
        return source
    key_hashes, labels = sources.split_index(dataset_dir, split)
    label_sets = sources.split_label_sets(dataset_dir, split) if subset.kind == "classes" else None
    indices = subsets.select(subset, key_hashes, labels, sources.class_names(dataset_dir), label_sets)
    return sources.IndexedSource(source, indices)


def derive_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for one random stream (shuffle, augmentation) of the pipeline seed."""
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def check_max_labels(max_labels: int) -> None:
    """ValueError naming data.max_labels unless it is an integer >= 0."""
    if not isinstance(max_labels, (int, np.integer)) or max_labels < 0:
        raise ValueError(f"data.max_labels={max_labels!r} must be an integer >= 0 (0 = no label sets in "
                         f"batches; e.g. 16 for web tags).")


def per_process_batch_size(batch_size: int, process_count: int, process_index: int, field: str) -> int:
    """batch_size / process_count, with errors naming `field` when it does not divide or is <= 0."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"{field}={batch_size} must be positive and divisible by the number of processes "
            f"({process_count}); set {field} to a multiple of {process_count}.")
    return batch_size // process_count


def train_examples(dataset_dir: str, split: str, *, image_size: int, seed: int,
                   crop_scale: tuple[float, float] = (0.2, 1.0),
                   crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                   subset: subsets.SubsetSpec | None = None, auto_augment: str = "",
                   max_labels: int = 0) -> grain.MapDataset:
    """The infinite augmented example sequence: element i is global example index i.

    `auto_augment`: a timm RandAugment string (`mim_jax.data.randaugment`), '' for none. `max_labels` > 0
    adds the padded label sets.
    """
    check_max_labels(max_labels)
    source = training_source(dataset_dir, split, subset)
    transform = TrainTransform(image_size, tuple(crop_scale), tuple(crop_ratio),
                               randaugment.parse_spec(auto_augment), max_labels=max_labels)
    return (
        grain.MapDataset.source(source)
        .shuffle(seed=derive_seed(seed, _SHUFFLE_STREAM))
        .repeat(None)
        .random_map(transform, seed=derive_seed(seed, _AUGMENT_STREAM))
    )


def train_batches(
    dataset_dir: str,
    split: str,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    num_workers: int = 0,
    prefetch_buffer_size: int = 2,
    subset: subsets.SubsetSpec | None = None,
    auto_augment: str = "",
    max_labels: int = 0,
) -> Iterator[Batch]:
    """Yields this process's slice {'image': uint8 [B/P,H,W,3], 'label': int32 [B/P]} of every step.

    With max_labels > 0 also 'labels': int32 [B/P, max_labels], the label sets padded with -1.
    """
    local = per_process_batch_size(global_batch_size, process_count, process_index,
                                   "data.global_batch_size")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0.")
    examples = train_examples(dataset_dir, split, image_size=image_size, seed=seed,
                              crop_scale=crop_scale, crop_ratio=crop_ratio, subset=subset,
                              auto_augment=auto_augment, max_labels=max_labels)
    if max_labels > 0 and process_index == 0:
        cut = sources.num_truncated(dataset_dir, split, max_labels)
        if cut:
            logging.warning("%d of %d records of split %r have more than data.max_labels=%d labels; their "
                            "first %d are kept.", cut, sources.num_examples(dataset_dir, split), split,
                            max_labels, max_labels)
    chunks = examples.batch(local, drop_remainder=True)  # chunk c = step c // P, process c % P.
    mine = chunks[start_step * process_count + process_index::process_count]
    return _iterate(mine, num_workers, prefetch_buffer_size)


def eval_batches(
    dataset_dir: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int | None = None,
    crop_pct: float = 0.875,
    num_workers: int = 0,
    prefetch_buffer_size: int = 2,
    max_labels: int = 0,
) -> Iterator[Batch]:
    """One pass in record order of {'image', 'label', 'mask'} (and 'labels'); the last global batch is padded.

    `batch_size` is global; every process yields ceil(n / batch_size) batches of batch_size / P.
    """
    check_max_labels(max_labels)
    local = per_process_batch_size(batch_size, process_count, process_index, "batch_size")
    source = sources.open_split(dataset_dir, split)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    if n <= 0:
        raise ValueError(f"eval_batches: nothing to evaluate in split {split!r} "
                         f"(max_examples={max_examples}, {len(source)} records).")
    examples = grain.MapDataset.source(source)[:n].map(EvalTransform(image_size, crop_pct, max_labels=max_labels))
    num_padding = -n % batch_size
    if num_padding:
        padding = grain.MapDataset.range(num_padding).map(PaddingExample(image_size, max_labels))
        examples = grain.MapDataset.concatenate([examples, padding])
    mine = examples.batch(local, drop_remainder=True)[process_index::process_count]
    return _iterate(mine, num_workers, prefetch_buffer_size)


def _iterate(batches: grain.MapDataset, num_workers: int, prefetch_buffer_size: int) -> Iterator[Batch]:
    """Iterates `batches` with threads (and worker processes when num_workers > 0) prefetching."""
    if num_workers < 0 or prefetch_buffer_size < 1:
        raise ValueError(f"Need num_workers >= 0 and prefetch_buffer_size >= 1; got "
                         f"num_workers={num_workers}, prefetch_buffer_size={prefetch_buffer_size}.")
    read_options = grain.ReadOptions(num_threads=prefetch_buffer_size,
                                     prefetch_buffer_size=prefetch_buffer_size)
    dataset = batches.to_iter_dataset(read_options)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(dataset)


def _ensure_absl_flags_parsed() -> None:
    """grain's mp_prefetch reads absl flags; outside `app.run` mark them parsed (defaults)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
