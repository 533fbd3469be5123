"""Man page and bash/zsh completion, generated from the argparse parser (arguments.py).

Runs in a build step (`python -m cardbridge_cli.docs man|bash|zsh` prints to stdout; the
Makefile stores the results) and in tests. Nothing here talks to D-Bus; the completions ask
`cardbridge devices --ids` for DEVICE and BRIDGE arguments at completion time.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from . import arguments, failures

DEVICE_METAVARS = {"DEVICE", "BRIDGE", "BRIDGE|DEVICE"}


@dataclass
class Option:
    flags: list[str]
    help: str
    metavar: str | None = None          # None: a flag without a value
    choices: list[str] | None = None


@dataclass
class Command:
    name: str
    help: str
    description: str
    positionals: list[tuple[str, str, str]] = field(default_factory=list)   # (metavar, nargs, help)
    options: list[Option] = field(default_factory=list)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(default)s" in text:
        text = text.replace("%(default)s", str(action.default))
    return text


def _options(parser: argparse.ArgumentParser) -> list[Option]:
    found = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        takes_value = action.nargs != 0
        metavar = None
        if takes_value:
            metavar = action.metavar or action.dest.upper()
        found.append(Option(list(action.option_strings), _help(action), metavar,
                            [str(c) for c in action.choices] if action.choices else None))
    return found


def describe(parser: argparse.ArgumentParser | None = None) -> tuple[list[Option], list[Command]]:
    """The global options and the commands, as plain data."""
    parser = parser or arguments.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    commands = []
    for name, subparser in sub.choices.items():
        cmd = Command(name, helps.get(name, ""), subparser.description or helps.get(name, ""))
        for action in subparser._actions:
            if not action.option_strings:
                cmd.positionals.append((action.metavar or action.dest.upper(), str(action.nargs),
                                        _help(action)))
        global_flags = {"--system", "--session", "--json"}
        cmd.options = [o for o in _options(subparser) if not set(o.flags) & global_flags]
        commands.append(cmd)
    return _options(parser), commands


# -- man page --------------------------------------------------------------------------------

def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _positional_synopsis(metavar: str, nargs: str) -> str:
    name = f"\\fI{_roff(metavar)}\\fR"
    if nargs == "?":
        return f"[{name}]"
    if nargs == "+":
        return f"{name}..."
    return name


def _option_synopsis(opt: Option) -> str:
    flag = " | ".join(f"\\fB{_roff(f)}\\fR" for f in opt.flags)
    if opt.metavar is None:
        return flag
    value = "|".join(opt.choices) if opt.choices else opt.metavar
    return f"{flag} \\fI{_roff(value)}\\fR"


def man_page() -> str:
    from .commands import client_version
    global_options, commands = describe()
    out = [
        f'.TH CARDBRIDGE 1 "" "cardbridge {client_version()}" "User Commands"',
        ".SH NAME",
        "cardbridge \\- control the cardbridge service (extra sound cards as JACK port sets)",
        ".SH SYNOPSIS",
        ".B cardbridge",
        "[\\fB\\-\\-system\\fR | \\fB\\-\\-session\\fR] [\\fB\\-\\-json\\fR] "
        "[\\fICOMMAND\\fR [\\fIARGUMENTS\\fR]]",
        ".SH DESCRIPTION",
        _roff(arguments.DESCRIPTION),
        ".PP",
        _roff("The client talks to the service over D-Bus only (bus name org.cardbridge.CardBridge1). "
              "Without --system or --session it uses the bus where the service is found, the "
              "session bus first. Without a command it runs status."),
        ".PP",
        _roff("BRIDGE may be a stable device id, a JACK client name or a bridge's D-Bus object path. "
              "DEVICE may be a stable device id (see cardbridge devices), an ALSA card id, number or "
              "hw: name, or the name of a device declared in the service's configuration file."),
        ".SH OPTIONS",
    ]
    for opt in global_options:
        out += [".TP", _option_synopsis(opt), _roff(opt.help)]
    out.append(".SH COMMANDS")
    for cmd in commands:
        synopsis = " ".join([f"\\fB{cmd.name}\\fR"]
                            + [_positional_synopsis(m, n) for m, n, _ in cmd.positionals]
                            + [f"[{_option_synopsis(o)}]" for o in cmd.options])
        out += [".TP", synopsis, _roff(cmd.description)]
        if cmd.options:
            out.append(".RS")
            for opt in cmd.options:
                out += [".TP", _option_synopsis(opt), _roff(opt.help)]
            out.append(".RE")
    out += [".SH OUTPUT",
            _roff("Human output is aligned tables, coloured only on a terminal and never when "
                  "NO_COLOR is set. With --json every command prints one JSON document, and watch "
                  "prints one JSON object per line; keys are stable and only ever added "
                  "(python3 -m cardbridge_cli.schema prints the schema)."),
            ".SH EXIT STATUS"]
    for code, meaning in failures.EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [".TP", "\\fB130\\fR", "interrupted (Ctrl\\-C)",
            ".PP", _roff("Errors are reported as one line on standard error: cardbridge: error: ..."),
            ".SH ENVIRONMENT",
            ".TP", "\\fBNO_COLOR\\fR", "no colour, even on a terminal",
            ".TP", "\\fBDBUS_SESSION_BUS_ADDRESS\\fR", "the session bus (looked at first)",
            ".TP", "\\fBDBUS_SYSTEM_BUS_ADDRESS\\fR", "the system bus",
            ".SH EXAMPLES",
            ".nf",
            _roff("cardbridge devices\n"
                  "cardbridge attach usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00 --name Scarlett\n"
                  "cardbridge --json status\n"
                  "cardbridge watch\n"
                  "cardbridge asoundrc Audio Audio_1 >> ~/.asoundrc"),
            ".fi",
            ".SH SEE ALSO",
            "\\fBcardbridged\\fR(1), \\fBjackd\\fR(1), \\fBbusctl\\fR(1)",
            ""]
    return "\n".join(out)


# -- bash ------------------------------------------------------------------------------------

def _takes_device(cmd: Command) -> bool:
    return any(m in DEVICE_METAVARS for m, _, _ in cmd.positionals)


def bash_completion() -> str:
    global_options, commands = describe()
    global_flags = " ".join(f for o in global_options for f in o.flags)
    value_cases = []
    for cmd in commands:
        for opt in cmd.options:
            if opt.metavar is not None:
                words = " ".join(opt.choices) if opt.choices else ""
                value_cases.append(f'        {"|".join(opt.flags)}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;')
    option_cases = []
    for cmd in commands:
        flags = " ".join(["--system", "--session", "--json", "--help"] + [f for o in cmd.options for f in o.flags])
        option_cases.append(f'        {cmd.name}) opts="{flags}"; device={1 if _takes_device(cmd) else 0} ;;')
    return "\n".join([
        "# bash completion for cardbridge (generated by python -m cardbridge_cli.docs bash)",
        "_cardbridge()",
        "{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local commands="' + " ".join(c.name for c in commands) + '"',
        "    local cmd='' bus='' i",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        "            --system|--session) bus=${COMP_WORDS[i]} ;;",
        "            -*) ;;",
        '            *) [[ -z $cmd ]] && cmd=${COMP_WORDS[i]} ;;',
        "        esac",
        "    done",
        '    case "$prev" in',
        *value_cases,
        "    esac",
        '    if [[ -z $cmd ]]; then',
        f'        COMPREPLY=($(compgen -W "{global_flags} --help $commands" -- "$cur"))',
        "        return",
        "    fi",
        "    local opts='' device=0",
        '    case "$cmd" in',
        *option_cases,
        "    esac",
        '    if [[ $cur == -* || $device == 0 ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "    else",
        '        local IFS=$\'\\n\'',
        '        COMPREPLY=($(compgen -W "$(cardbridge $bus devices --ids 2>/dev/null)" -- "$cur"))',
        "    fi",
        "}",
        "complete -F _cardbridge cardbridge",
        "",
    ])


# -- zsh -------------------------------------------------------------------------------------

def _zsh_text(text: str) -> str:
    return (text.replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", " -"))


def _zsh_option(opt: Option) -> str:
    help_text = _zsh_text(opt.help)
    if opt.metavar is None:
        value = ""
    elif opt.choices:
        value = f":{opt.metavar.lower()}:({' '.join(opt.choices)})"
    else:
        value = f":{opt.metavar.lower()}:"
    flags = opt.flags
    if len(flags) == 1:
        return f"'{flags[0]}[{help_text}]{value}'"
    return "'(" + " ".join(flags) + ")'{" + ",".join(flags) + "}" + f"'[{help_text}]{value}'"


def zsh_completion() -> str:
    global_options, commands = describe()
    lines = [
        "#compdef cardbridge",
        "# zsh completion for cardbridge (generated by python -m cardbridge_cli.docs zsh)",
        "",
        "_cardbridge_devices() {",
        "  local -a ids",
        '  ids=(${(f)"$(cardbridge devices --ids 2>/dev/null)"})',
        "  compadd -a ids",
        "}",
        "",
        "_cardbridge() {",
        "  local curcontext=$curcontext state line",
        "  local -a commands",
        "  commands=(",
    ]
    lines += [f"    '{c.name}:{_zsh_text(c.help)}'" for c in commands]
    lines += [
        "  )",
        "  _arguments -C \\",
        "    '(--session)--system[talk to the service on the system bus]' \\",
        "    '(--system)--session[talk to the service on the session bus]' \\",
    ]
    lines += [f"    {_zsh_option(o)} \\" for o in global_options if o.flags[0] not in ("--system", "--session")]
    lines += [
        "    '(- *)'{-h,--help}'[show help]' \\",
        "    '1: :->command' \\",
        "    '*:: :->arguments'",
        "  case $state in",
        "    command) _describe -t commands 'cardbridge command' commands ;;",
        "    arguments)",
        "      case $words[1] in",
    ]
    for cmd in commands:
        specs = ["'--json[print JSON]'", "'(--session)--system[system bus]'",
                 "'(--system)--session[session bus]'"] + [_zsh_option(o) for o in cmd.options]
        for index, (metavar, nargs, help_text) in enumerate(cmd.positionals, start=1):
            action = "_cardbridge_devices" if metavar in DEVICE_METAVARS else ""
            position = "*" if nargs == "+" else str(index)
            optional = ":" if nargs == "?" else ""
            specs.append(f"'{position}:{optional}{_zsh_text(metavar.lower())}:{action}'")
        lines.append(f"        {cmd.name}) _arguments {' '.join(specs)} ;;")
    lines += ["      esac ;;", "  esac", "}", "", '_cardbridge "$@"', ""]
    return "\n".join(lines)


GENERATORS = {"man": man_page, "bash": bash_completion, "zsh": zsh_completion}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in GENERATORS:
        sys.stderr.write("usage: python -m cardbridge_cli.docs man|bash|zsh\n")
        return failures.USAGE
    sys.stdout.write(GENERATORS[argv[0]]())
    return failures.OK


if __name__ == "__main__":
    sys.exit(main())
