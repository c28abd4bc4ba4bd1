# Sourced by the launchers: refuse a repository URL or ref that a cloud VM cannot use, or
# must not see, before anything is created (and billed).
#   check_repo LAUNCHER URL REF
check_repo() {
    local me=$1 url=$2 ref=$3
    case "$url" in
        *://*@*)  # https://user:token@host/...: the token would land in instance metadata / the job spec
            echo "$me: the repository URL carries credentials (${url%%://*}://...@${url#*@}); pass --repo with a" \
                 "URL without them (the VM or job would store and print them)" >&2; return 2;;
        git@*|ssh://*)
            echo "$me: $url is an SSH URL; the VM clones without your SSH keys. Pass --repo https://..." >&2; return 2;;
    esac
    # one URL: not an option to git (--upload-pack=... runs a command), no space, no '#'
    # (the instance metadata's delimiter is ##)
    [[ $url =~ ^[a-zA-Z][a-zA-Z0-9+.-]*://[^[:space:][:cntrl:]#]+$ ]] || {
        echo "$me: --repo $(shown "$url"): not a repository URL the VM can clone; use --repo https://..." >&2; return 2; }
    [ -n "$ref" ] || return 0
    local tips
    if ! tips=$(GIT_TERMINAL_PROMPT=0 timeout 60 git ls-remote "$url" 2>&1); then
        echo "$me: cannot read $url (git ls-remote: $(echo "$tips" | tail -1)); the VM could not clone it either" >&2
        return 2
    fi
    # a branch tip there, or a commit that a remote-tracking branch here contains (pushed earlier)
    if echo "$tips" | grep -q "^$ref" || [ -n "$(git -C "$HERE/.." branch -r --contains "$ref" 2>/dev/null)" ]; then
        return 0
    fi
    echo "$me: commit ${ref:0:12} is not on $url (push it first, or pass --ref with a pushed commit)" >&2
    return 2
}
