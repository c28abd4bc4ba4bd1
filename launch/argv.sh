# Sourced wherever a job's command crosses to another machine (launch/flags.sh on your side;
# launch/gce_startup.sh and launch/skypilot.yaml's run: on the machine that trains): the
# command travels as a JSON array of strings, one element per argument, never as a command
# line, so no argument is split, globbed or run as code on its way.

json_array() {  # json_array ARGS...: the arguments as one JSON array (ASCII; any byte survives)
    python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
}

argv_from_json() {  # argv_from_json VAR WHAT JSON: the JSON array as the bash array VAR, or one line and status 2
    # JSON -> NUL-separated (no argument holds a NUL) -> one array element per argument
    mapfile -t -d '' "$1" < <(python3 -c 'import json, sys
try:
    argv = json.loads(sys.argv[2])
except ValueError:
    argv = None
if not (isinstance(argv, list) and all(isinstance(a, str) and "\0" not in a for a in argv)):
    sys.exit(f"{sys.argv[1]} is not a JSON array of strings: {sys.argv[2][:80]!r}; give e.g. [\"--epochs\", \"3\"]")
sys.stdout.buffer.write(b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in argv))' "$2" "$3")
    wait $! || return 2   # the decoder's status (mapfile's is not it)
}
