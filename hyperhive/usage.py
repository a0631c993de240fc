"""A usage text parsed one command at a time: docopt's answer for the admin CLI without docopt's cost.

docopt 0.6.2 readies a pattern by comparing every leaf of it with every other
through their reprs (`fix_identities`), so one parse of the CLI's whole usage,
thirty lines, was most of what a `list` call cost. `parse` hands docopt's
matcher only the lines of the command argv names, told what the whole text
would have told it: which options `[options]` stands for (those no line
names), and which arguments repeat (NAME is a list on every line because
`start NAME...` repeats it). The answer is the dict docopt returns for the
whole text, key for key.

Whatever is not one of the given commands, asks for `-h`, `--help` or
`--version`, or does not match goes to docopt with the whole text, so its
help, its version and its refusals are its own, word for word.
tests/test_cli.py holds `parse` to docopt's answer for every command; it
reads docopt's internals, so a docopt other than the pinned 0.6.2 must pass
that test first.
"""

from collections import Counter

import docopt as _docopt
from docopt import AnyOptions, Argument, Command, DocoptExit, Option

EXTRAS = ("-h", "--help", "--version")  # what docopt answers itself, with the whole text


def parse(doc, argv, commands, version=None):
    """docopt(doc, argv, version=version), reading only the usage lines of argv's command when it is in
    `commands`."""
    try:
        args = _one_command(doc, list(argv), commands)
    except DocoptExit:
        args = None  # docopt says why, below, with the whole usage
    return _docopt.docopt(doc, argv=argv, version=version) if args is None else args


def command_word(doc, argv):
    """(argv's command word or None, whether argv asks for help): what a person typed, read with the usage's
    options so that `--socket PATH list` finds `list`; (None, False) for a line docopt's tokenizer refuses."""
    options = _docopt.parse_defaults(doc)
    try:
        tokens = _docopt.parse_argv(_docopt.TokenStream(list(argv), DocoptExit), list(options))
    except DocoptExit:
        return None, False
    words = [t.value for t in tokens if type(t) is Argument]
    helped = any(type(t) is Option and t.name in ("-h", "--help") for t in tokens)
    return (words[0] if words else None), helped


def command_of(line):
    """A usage line's command: its first word after the program's name that is not an option, a bracket,
    an alternative or an ARGUMENT (None for a line of options only)."""
    for word in line.split()[1:]:
        word = word.strip("()[]|")
        if word and not word.startswith("-") and not word.startswith("<") and not word.isupper() \
                and word != "options":
            return word
    return None


def _one_command(doc, argv, commands):
    usage = _docopt.printable_usage(doc)
    options = _docopt.parse_defaults(doc)
    # the whole usage is tokenized (linear; it adds options named only there, like --version, to `options`);
    # what costs is readying and matching it, which only the command's lines get
    whole = _docopt.parse_pattern(_docopt.formal_usage(usage), options)
    tokens = _docopt.parse_argv(_docopt.TokenStream(argv, DocoptExit), list(options))
    words = [t.value for t in tokens if type(t) is Argument]
    if not words or words[0] not in commands or any(type(t) is Option and t.name in EXTRAS for t in tokens):
        return None
    title, *lines = usage.split("\n")
    own = [line for line in lines if command_of(line) == words[0]]
    pattern = _docopt.parse_pattern(_docopt.formal_usage("\n".join([title] + own)), options)
    # `[options]` is every option of the Options section that no usage line names, on every line
    unnamed = set(_docopt.parse_defaults(doc)) - set(whole.flat(Option))
    for group in whole.flat(AnyOptions) + pattern.flat(AnyOptions):
        group.children = list(unnamed)
    repeating = {leaf.name for case in whole.either.children
                 for leaf, count in Counter(case.children).items() if count > 1}
    pattern.fix()
    for leaf in whole.flat() + pattern.flat():
        if leaf.name in repeating:
            _repeat(leaf)
    matched, left, collected = pattern.match(tokens)
    if not matched or left:
        return None
    return _docopt.Dict((leaf.name, leaf.value) for leaf in whole.flat() + pattern.flat() + collected)


def _repeat(leaf):
    """Make a leaf collect, as docopt's fix_repeating_arguments does one it sees repeated."""
    if type(leaf) is Argument or type(leaf) is Option and leaf.argcount:
        if leaf.value is None:
            leaf.value = []
        elif type(leaf.value) is not list:
            leaf.value = leaf.value.split()
    if type(leaf) is Command or type(leaf) is Option and leaf.argcount == 0:
        leaf.value = 0
