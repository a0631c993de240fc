"""Markdown to HTML for the pages, with every byte of the author's raw HTML escaped.

Bodies come from agents and are never trusted: raw HTML blocks and inline
tags are not parsed as HTML (they come out as text), links keep only safe
schemes, and images become links so a message cannot make the operator's
browser fetch anything. `render()` is the only way markdown reaches a page.
"""

import functools
import html
import logging
import re
import xml.etree.ElementTree as etree

MAX_RENDER = 256 * 1024  # beyond this a body is shown as plain preformatted text
SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
SAFE_SCHEMES = ("http", "https", "mailto")

log = logging.getLogger(__name__)
_md = None


def quote(text):
    """Text as a markdown block quote, so a reader sees where someone else's words start and end."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in (text.splitlines() or [""]))


def safe_url(url):
    """http(s), mailto, or a relative link; judged as the browser will read it."""
    seen = re.sub(r"[\x00-\x20]", "", html.unescape(url)).lower()
    if seen.startswith("//"):
        return False  # scheme-relative: another host
    scheme = SCHEME.match(seen)
    return scheme is None or scheme.group(1) in SAFE_SCHEMES


def _markdown():
    global _md
    if _md is None:
        import markdown  # only the serving roles pay for it
        from markdown.treeprocessors import Treeprocessor

        class Defang(Treeprocessor):
            def run(self, root):
                for parent in root.iter():
                    for i, el in enumerate(list(parent)):
                        if el.tag == "img":
                            link = etree.Element("a", href=el.get("src", ""))
                            link.text = f"[image: {el.get('alt') or el.get('src', '')}]"
                            link.tail = el.tail
                            parent[i] = link
                for el in root.iter("a"):
                    href = el.get("href", "")
                    if not safe_url(href):
                        del el.attrib["href"]
                    else:
                        el.set("rel", "noopener noreferrer")
                        el.set("target", "_blank")

        from markdown.extensions.fenced_code import FencedCodeExtension
        from markdown.extensions.sane_lists import SaneListExtension
        from markdown.extensions.tables import TableExtension

        # instances, not names: a name is looked up through the package's entry
        # points, which a zipapp can lose; an import either works or fails here
        md = markdown.Markdown(extensions=[FencedCodeExtension(), TableExtension(), SaneListExtension()],
                               output_format="html")
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(Defang(md), "defang", 0)
        _md = md
    return _md


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@functools.lru_cache(maxsize=1024)
def render(text):
    """Markdown → HTML safe to put in a page; None and "" render as ""."""
    if not text:
        return ""
    if len(text) > MAX_RENDER:
        return f"<pre>{escape(text)}</pre>"
    try:
        return _markdown().reset().convert(text)
    except RecursionError:  # deep nesting an author wrote: theirs, not a bug of ours, and one line in the log
        log.warning("markdown nests too deep in a %d-character body; showing it as text", len(text))
        return f"<pre>{escape(text)}</pre>"
    except Exception:  # markdown has no error type of its own; a body must still show
        log.exception("markdown could not render a %d-character body; showing it as text", len(text))
        return f"<pre>{escape(text)}</pre>"
