# Sourced by scripts/gpu_kit.sh and scripts/gpu_suite_kit.sh: what a rented CUDA machine takes along is the
# tracked tree, untracked files git does not ignore, and the carried kit folder, 64 MiB in all.
#
#   kit_travels KIT ASIDE...   KIT: the kit folder (kept out of git by .git/info/exclude); ASIDE: the tracked
#                              folders that go out of the tree for the call. Lists the kit, prints the total,
#                              fails when it is over, and prints the commands that move ASIDE out and back.
kit_travels() {
    local kit_dir=$1
    shift
    mkdir -p .git/info && touch .git/info/exclude
    grep -qx "/$kit_dir/" .git/info/exclude || echo "/$kit_dir/" >>.git/info/exclude
    local excluded tree kit
    excluded=$(echo "$*" | sed 's/ /|/g')
    tree=$(git ls-files -z --cached --others --exclude-standard | grep -zEv "^($excluded)/" |
        du -cb --apparent-size --files0-from=- | tail -1 | cut -f1)
    kit=$(du -sb --apparent-size "$kit_dir" | cut -f1)
    find "$kit_dir" -type f -printf "%10s  %p\n" | sort -k2 | head -30
    echo "travels (carry $kit_dir): tree $((tree / 1024)) KiB + $kit_dir $((kit / 1024)) KiB = $(((tree + kit) / 1024)) KiB of $((64 * 1024))"
    [ $((tree + kit)) -le $((64 * 1024 * 1024)) ] || { echo "too large to travel" >&2; return 1; }
    echo "before the call: mkdir -p /tmp/aside && mv $* /tmp/aside/"
    echo "after it:        mv $(for d in "$@"; do printf '/tmp/aside/%s ' "$d"; done). && git status --short"
}
