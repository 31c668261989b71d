"""Corpus sources -> an ordered stream of articles -> chunks `(article, position, text)`.

Every source yields the same `Article(title, paragraphs)` stream, in source order:
`gensim_enwiki_sample` (the offline default, a MediaWiki dump bundled with gensim),
`jsonl` (`{"title", "paragraphs": [...]}` or `{"title", "text"}` per line, optionally gzipped),
`mediawiki_dump` (`.xml` / `.xml.bz2`, streamed), `hf_dataset` (needs `datasets` and network).
The `vectors` source skips text entirely and is read by `lvmlib.data.prepare`.

Wikitext -> plain text walks the mwparserfromhell tree: templates, references, tables, files,
categories and the trailing reference sections (See also, References, ...) are dropped,
so chunks are prose. List items are kept (in Wikipedia they carry content), each as its own paragraph. Chunking splits paragraphs into sentences with pysbd (rule-based, offline) and
groups consecutive sentences, in article order, until a chunk has >= min_words words.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lvmlib.core.config import DataConfig
from lvmlib.core.errors import CorpusError

# Bump when cleaning or chunking changes: it is part of the chunk-cache key in lvmlib.data.prepare.
CORPUS_VERSION = "2"  # 2: over-long paragraphs are cut before sentence splitting
GENSIM_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass
class Article:
    title: str
    paragraphs: list[str]  # plain text, article order


# --------------------------------------------------------------------------- wikitext -> plain text
_DROP_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "math",
    "chem",
    "timeline",
    "syntaxhighlight",
    "source",
    "score",
    "imagemap",
    "graph",
    "mapframe",
    "templatedata",
    "nowiki",
    "pre",
    "code",
    "hiero",
    "poem",
    "noinclude",
    "includeonly",
}
_LIST_TAGS = {"li", "dt", "dd"}
_DROP_LINK_NS = {
    "file",
    "image",
    "category",
    "media",
    "wikipedia",
    "wp",
    "template",
    "help",
    "portal",
    "special",
    "user",
    "talk",
    "draft",
    "module",
}
_DROP_SECTIONS = {
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "citations",
    "footnotes",
    "notes and references",
    "references and notes",
    "works cited",
    "selected bibliography",
    "primary sources",
    "secondary sources",
}
_LIST_MARK = "\x00"
_WS = re.compile(r"[ \t\u00a0]+")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACE_PUNCT = re.compile(r"\s+([,.;:!?])")


def _render(nodes, out: list[str]) -> None:
    """Append the prose of mwparserfromhell `nodes` to `out` (recursive, drops non-prose nodes)."""
    import mwparserfromhell.nodes as N

    for node in nodes:
        if isinstance(node, N.Text):
            out.append(node.value)
        elif isinstance(node, N.Wikilink):
            title = str(node.title).strip()
            ns = title.split(":", 1)[0].strip().lower() if ":" in title else ""
            if ns in _DROP_LINK_NS or title.startswith(":"):
                continue
            if node.text is not None:
                _render(node.text.nodes, out)
            else:
                out.append(title.split("#", 1)[0] if not title.startswith("#") else title[1:])
        elif isinstance(node, N.Tag):
            tag = str(node.tag).strip().lower()
            if tag in _DROP_TAGS:
                continue
            if tag in _LIST_TAGS and node.wiki_markup:
                out.append("\n" + _LIST_MARK)
            elif tag == "br":
                out.append(" ")
            elif node.contents is not None:
                _render(node.contents.nodes, out)
        elif isinstance(node, N.ExternalLink):
            if node.title is not None:
                _render(node.title.nodes, out)
        elif isinstance(node, N.HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, N.Heading):
            out.append("\n\n")
        # Template, Comment, Argument: not prose


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Wikitext -> prose paragraphs (headings, tables, refs, templates, reference sections removed)."""
    import mwparserfromhell
    import mwparserfromhell.nodes as N

    code = mwparserfromhell.parse(wikitext, skip_style_tags=False)
    out: list[str] = []
    skipping = False
    pending: list = []
    for node in code.nodes:  # top level: cut the reference sections off by heading
        if isinstance(node, N.Heading):
            _render(pending, out)
            pending = []
            title = node.title.strip_code().strip().lower()
            if node.level <= 2:
                skipping = title in _DROP_SECTIONS
            elif title in _DROP_SECTIONS:
                skipping = True
            out.append("\n\n")
            continue
        if not skipping:
            pending.append(node)
    _render(pending, out)
    return clean_paragraphs("".join(out))


def clean_paragraphs(text: str) -> list[str]:
    """Plain text with blank-line paragraph breaks -> tidy paragraphs; each list item is a paragraph
    of its own (so a sentence never runs across items), table residue lines are dropped."""
    raw: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        cur: list[str] = []
        for ln in block.split("\n"):
            if ln.startswith(_LIST_MARK):  # a list item starts a paragraph of its own
                raw.append(" ".join(cur))
                cur = [ln.lstrip(_LIST_MARK)]
            elif ln.strip() and not ln.lstrip().startswith(("|", "{|", "!")):
                cur.append(ln)
        raw.append(" ".join(cur))
    paragraphs = []
    for para in raw:
        para = _WS.sub(" ", para).strip()
        para = _SPACE_PUNCT.sub(r"\1", _EMPTY_PARENS.sub("", para))
        para = _WS.sub(" ", para).strip()
        if len(para.split()) >= 2:
            paragraphs.append(para)
    return paragraphs


# --------------------------------------------------------------------------- sources
def gensim_sample_path() -> Path:
    """Path of gensim's bundled enwiki sample, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("data.source 'gensim_enwiki_sample' needs the gensim package (pip install gensim)")
    path = Path(list(spec.submodule_search_locations)[0]) / GENSIM_SAMPLE
    if not path.is_file():
        raise CorpusError(f"{path}: gensim's bundled enwiki sample is missing (reinstall gensim)")
    return path


def _need_file(path: str, source: str) -> Path:
    if not path:
        raise CorpusError(f"data.path is empty: data.source '{source}' needs a file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CorpusError(f"{p}: corpus file not found (data.path for data.source '{source}')")
    return p


def iter_jsonl(path: str | Path) -> Iterator[Article]:
    """One article per line: {"title", "paragraphs": [...]} or {"title", "text"} (blank lines ignored)."""
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(p, "rb") as fh:  # bytes, decoded line by line: a bad byte is named with its own line
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{p}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                        f"{len(raw[: exc.start].decode('utf-8', 'replace')) + 1})"
                    ) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{p}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise CorpusError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                title = obj.get("title", "")
                if "paragraphs" in obj:
                    paras = obj["paragraphs"]
                    if not isinstance(paras, list) or not all(isinstance(x, str) for x in paras):
                        raise CorpusError(f"{p}:{lineno}: key 'paragraphs' must be a list of strings")
                elif "text" in obj:
                    if not isinstance(obj["text"], str):
                        raise CorpusError(f"{p}:{lineno}: key 'text' must be a string")
                    paras = re.split(r"\n\s*\n", obj["text"])
                else:
                    raise CorpusError(f"{p}:{lineno}: needs key 'paragraphs' or 'text' (has {sorted(obj)})")
                yield Article(str(title), [re.sub(r"\s+", " ", x).strip() for x in paras if x.strip()])
    except (EOFError, OSError) as exc:
        raise CorpusError(f"{p}: unreadable or truncated after line {lineno} ({type(exc).__name__}: {exc})") from None


def iter_mediawiki(path: str | Path) -> Iterator[Article]:
    """Stream a MediaWiki XML export: main namespace (ns 0) only, redirects skipped, markup stripped."""
    p = Path(path)
    opener = bz2.open if p.name.endswith(".bz2") else gzip.open if p.name.endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            context = ET.iterparse(fh, events=("end",))
            for _, el in context:
                if el.tag.rsplit("}", 1)[-1] != "page":
                    continue
                ns = el.findtext("{*}ns")
                title = el.findtext("{*}title") or ""
                redirect = el.find("{*}redirect") is not None
                text = el.findtext("{*}revision/{*}text") or ""
                el.clear()
                if ns not in (None, "0") or redirect or text.lstrip()[:9].upper() == "#REDIRECT":
                    continue
                yield Article(title, wikitext_to_paragraphs(text))
    except ET.ParseError as exc:
        line, col = exc.position
        raise CorpusError(f"{p}:{line}: malformed or truncated XML dump (column {col}: {exc})") from None
    except (EOFError, OSError) as exc:
        raise CorpusError(f"{p}: unreadable or truncated dump ({type(exc).__name__}: {exc})") from None


def iter_hf(name: str, config: str) -> Iterator[Article]:
    """Stream a Hugging Face dataset with `title` and `text` columns (needs `datasets` and network)."""
    try:
        import datasets  # optional extra: pip install 'lvmlib[hf]'
    except ImportError:
        raise CorpusError(
            "data.source 'hf_dataset' needs the optional 'datasets' package: pip install 'lvmlib[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split="train", streaming=True)
        for row in ds:
            yield Article(str(row.get("title", "")), [x for x in re.split(r"\n\s*\n", row["text"]) if x.strip()])
    except (ConnectionError, OSError, ValueError) as exc:
        raise CorpusError(
            f"hf_dataset {name!r} config {config!r}: cannot be loaded ({exc}). It needs "
            "network access (HF_HUB_OFFLINE must not be 1) or a local datasets cache"
        ) from None


def iter_articles(cfg: DataConfig) -> Iterator[Article]:
    """The source's articles in order, capped at `max_articles` (the first N: deterministic, streaming)."""
    if cfg.source == "gensim_enwiki_sample":
        it = iter_mediawiki(gensim_sample_path())
    elif cfg.source == "jsonl":
        it = iter_jsonl(_need_file(cfg.path, cfg.source))
    elif cfg.source == "mediawiki_dump":
        it = iter_mediawiki(_need_file(cfg.path, cfg.source))
    elif cfg.source == "hf_dataset":
        it = iter_hf(cfg.hf_name, cfg.hf_config)
    elif cfg.source == "vectors":
        raise CorpusError("data.source 'vectors' holds no text; lvmlib.data.prepare reads it directly")
    else:
        raise CorpusError(f"data.source {cfg.source!r}: unknown source")
    for i, art in enumerate(it):
        if cfg.max_articles and i >= cfg.max_articles:
            return
        yield art


def source_file(cfg: DataConfig) -> Path | None:
    """The file behind a file source (its identity is part of the chunk-cache key)."""
    if cfg.source == "gensim_enwiki_sample":
        return gensim_sample_path()
    if cfg.source in ("jsonl", "mediawiki_dump", "vectors"):
        return _need_file(cfg.path, cfg.source)
    return None


# --------------------------------------------------------------------------- chunking
_SEGMENTER = None
# pysbd's time grows with the square of a paragraph's length (38 KB 1.4 s, 307 KB 108 s; ~10 us/char up
# to 10 KB): longer paragraphs are first cut into pieces of at most this many characters.
MAX_PARAGRAPH_CHARS = 5000
_BREAK = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")  # a sentence end, then a capital or digit


@dataclass
class ChunkStats:
    """What chunking had to repair, for the data summary; `on_piece(done, total)` reports progress
    through an over-long paragraph."""

    long_paragraphs: int = 0  # paragraphs over MAX_PARAGRAPH_CHARS, cut into pieces before splitting
    long_paragraph_chars: int = 0
    on_piece: Callable[[int, int], None] | None = None


def cut_paragraph(paragraph: str, limit: int = MAX_PARAGRAPH_CHARS) -> list[str]:
    """Pieces of at most `limit` characters, in linear time: each cut is at the last sentence end
    (., ! or ? then a space and a capital) in the second half of the window, else at its last
    space, else hard (a paragraph without spaces)."""
    pieces, start, n, half = [], 0, len(paragraph), limit // 2
    while n - start > limit:
        window = paragraph[start + half : start + limit]
        cut = None
        for m in _BREAK.finditer(window):
            cut = m.end()
        if cut is None:
            space = window.rfind(" ")
            cut = space + 1 if space >= 0 else len(window)
        cut += start + half
        pieces.append(paragraph[start:cut].strip())
        start = cut
    pieces.append(paragraph[start:].strip())
    return [x for x in pieces if x]


def _pieces(paragraph: str, stats: ChunkStats | None) -> list[str]:
    if len(paragraph) <= MAX_PARAGRAPH_CHARS:
        return [paragraph]
    pieces = cut_paragraph(paragraph)
    if stats is not None:
        stats.long_paragraphs += 1
        stats.long_paragraph_chars += len(paragraph)
    return pieces


def split_sentences(paragraph: str, stats: ChunkStats | None = None) -> list[str]:
    """Sentences of one paragraph (pysbd, English rules, offline); linear time in its length (an
    over-long paragraph is cut into pieces first, each piece a sentence boundary)."""
    global _SEGMENTER
    if _SEGMENTER is None:
        import pysbd

        _SEGMENTER = pysbd.Segmenter(language="en", clean=False)
    pieces = _pieces(paragraph, stats)
    out = []
    for i, piece in enumerate(pieces, 1):
        out += [s.strip() for s in _SEGMENTER.segment(piece) if s.strip()]
        if len(pieces) > 1 and stats is not None and stats.on_piece is not None:
            stats.on_piece(i, len(pieces))
    return out


def group_sentences(sentences: list[str], min_words: int, max_words: int, overlap: bool = False) -> list[str]:
    """Consecutive sentences -> chunks of >= min_words words, never > max_words (unless one sentence is).

    A too-short tail joins the previous chunk when that stays <= max_words. `overlap` repeats each
    chunk's last sentence at the start of the next (the seed's chunker; makes near-duplicate neighbours).
    """

    def words(sents: list[str]) -> int:
        return sum(len(x.split()) for x in sents)

    def carry(prev: list[str]) -> tuple[list[str], int, bool]:
        return ([prev[-1]], words(prev[-1:]), True) if overlap else ([], 0, False)

    chunks: list[list[str]] = []
    cur, n, carried = [], 0, False
    for s in sentences:
        w = len(s.split())
        if cur and n + w > max_words:  # flush before overflowing, even if still short
            if not (carried and len(cur) == 1):
                chunks.append(cur)
                cur, n, carried = carry(cur)
            if cur and n + w > max_words:  # the carried sentence does not fit either
                cur, n, carried = [], 0, False
        cur.append(s)
        n += w
        if n >= min_words:
            chunks.append(cur)
            cur, n, carried = carry(cur)
    fresh = cur[1:] if carried else cur
    if fresh:
        if chunks and words(chunks[-1]) + words(fresh) <= max_words:
            chunks[-1] = chunks[-1] + fresh
        else:
            chunks.append(cur)
    return [" ".join(c) for c in chunks]


def chunk_article(article: Article, cfg: DataConfig, stats: ChunkStats | None = None) -> list[str]:
    """An article's chunks in order (position = index in the returned list)."""
    if cfg.chunking == "paragraphs":
        # a paragraph is a chunk (an over-long one: its pieces); short ones are grouped with the next
        paras = [x for p in article.paragraphs for x in _pieces(p, stats)]
        return group_sentences(paras, cfg.min_words, cfg.max_words, overlap=False)
    sentences = [s for p in article.paragraphs for s in split_sentences(p, stats)]
    return group_sentences(sentences, cfg.min_words, cfg.max_words, cfg.sentence_overlap)


def chunk_workers(cfg: DataConfig) -> int:
    """Processes that split sentences: `data.chunk_workers`, 0 = one per CPU core."""
    return max(1, cfg.chunk_workers or os.cpu_count() or 1)


def _chunk_job(job: tuple[Article, DataConfig]) -> tuple[str, list[str], int, int]:
    art, cfg = job
    st = ChunkStats()
    return art.title, chunk_article(art, cfg, st), st.long_paragraphs, st.long_paragraph_chars


def iter_chunked(cfg: DataConfig, stats: ChunkStats | None = None) -> Iterator[tuple[str, list[str]]]:
    """(title, chunks) per article, in source order. With more than one worker (`chunk_workers`) the
    articles are read here and split into sentences by a process pool (pysbd is pure Python and most
    of a cold data stage's chunking time), at most 4 articles per worker in flight so a streamed dump
    is never read ahead into memory; the output is the same as one process's. `stats.on_piece`
    (progress inside one over-long paragraph) is reported only by a single worker."""
    workers = chunk_workers(cfg)
    if workers == 1:
        for art in iter_articles(cfg):
            yield art.title, chunk_article(art, cfg, stats)
        return
    import multiprocessing as mp
    from collections import deque

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")

    def emit(res: tuple[str, list[str], int, int]) -> tuple[str, list[str]]:
        if stats is not None:
            stats.long_paragraphs += res[2]
            stats.long_paragraph_chars += res[3]
        return res[0], res[1]

    with ctx.Pool(workers, initializer=_ignore_sigint) as pool:
        pending: deque = deque()
        for art in iter_articles(cfg):
            pending.append(pool.apply_async(_chunk_job, ((art, cfg),)))
            if len(pending) >= 4 * workers:
                yield emit(pending.popleft().get())
        while pending:
            yield emit(pending.popleft().get())


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to their parent: an interrupt (the runner signals the kernel's whole
    process group) then raises in the parent alone, whose `with Pool` terminates the workers cleanly; a
    worker dying of KeyboardInterrupt mid-task could leave `Pool.terminate` waiting forever."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- chunk cache
def _file_identity(path: Path) -> str:
    """Content hash for files up to 256 MB (cheap, move-proof); path + size + mtime beyond that."""
    st = path.stat()
    if st.st_size <= 256 << 20:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return "sha:" + h.hexdigest()
    return f"stat:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def chunk_cache_key(cfg: DataConfig) -> str:
    f = source_file(cfg)
    ident = _file_identity(f) if f is not None else f"hf:{cfg.hf_name}:{cfg.hf_config}"
    parts = [
        CORPUS_VERSION,
        cfg.source,
        ident,
        cfg.chunking,
        cfg.min_words,
        cfg.max_words,
        cfg.sentence_overlap,
        cfg.max_articles,
    ]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=12).hexdigest()


def iter_chunked_cached(
    cfg: DataConfig, cache_root: Path | None, stats: ChunkStats | None = None
) -> Iterator[tuple[str, list[str]]]:
    """`iter_chunked`, replayed from `<cache>/chunks/<key>.jsonl` when this exact source + chunking
    was chunked before (sentence splitting is the slow part of a warm re-run). Written atomically,
    only after the whole stream was read, so an interrupted run never leaves a partial entry."""
    stats = stats if stats is not None else ChunkStats()
    if cache_root is None:
        yield from iter_chunked(cfg, stats)
        return
    path = Path(cache_root) / "chunks" / f"{chunk_cache_key(cfg)}.jsonl"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                title, chunks, *cut = json.loads(line)  # cut: [paragraphs, characters] when any was cut
                if cut:
                    stats.long_paragraphs += cut[0]
                    stats.long_paragraph_chars += cut[1]
                yield title, chunks
        return
    from lvmlib.core.runs import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        n0, c0 = stats.long_paragraphs, stats.long_paragraph_chars
        for title, chunks in iter_chunked(cfg, stats):
            cut = [stats.long_paragraphs - n0, stats.long_paragraph_chars - c0]  # this article's
            n0, c0 = stats.long_paragraphs, stats.long_paragraph_chars
            out.write(json.dumps([title, chunks] + (cut if cut[0] else []), ensure_ascii=False) + "\n")
            yield title, chunks
