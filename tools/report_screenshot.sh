#!/usr/bin/env bash
# Opens a `cnnc report` page in headless Chromium (Debian's `chromium` package), takes a
# screenshot, and checks that the page's parts rendered: the graph's SVG with its node
# boxes, the layer table's rows, and (when the page has them) the activation and saliency
# pictures decoded to a non-zero size. Exits 1 when a part is missing.
#
#   bash tools/report_screenshot.sh report.html [screenshot.png]
#
# No network is needed: the page is self-contained.
set -euo pipefail
page=${1:?usage: tools/report_screenshot.sh REPORT.html [SCREENSHOT.png]}
shot=${2:-${page%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "error: no chromium found (Debian: apt-get install chromium)" >&2
    exit 1
fi
url="file://$(realpath "$page")"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions)
"$browser" "${flags[@]}" --window-size=1400,1800 --screenshot="$shot" "$url" 2>/dev/null
# The DOM after rendering, with a script that measures what the browser laid out and
# decoded, written into the document's title.
probe=$(mktemp --suffix=.html)
trap 'rm -f "$probe"' EXIT
{
    cat "$page"
    cat <<'JS'
<script>
const count = (selector) => document.querySelectorAll(selector).length;
const laidOut = (selector) => [...document.querySelectorAll(selector)].filter(e => {
  const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length;
const decoded = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
document.title = JSON.stringify({
  nodes: laidOut('#graph-svg g.node rect'), rows: count('#layers tbody tr'),
  activations: count('#activations img'), saliency: count('#saliency img'),
  images: document.images.length, decoded });
</script>
JS
} > "$probe"
dom=$("$browser" "${flags[@]}" --virtual-time-budget=5000 --dump-dom "file://$probe" 2>/dev/null)
result=$(sed -n 's:.*<title>\({.*}\)</title>.*:\1:p' <<<"$dom" | head -1 | sed 's/&quot;/"/g')
if [[ -z $result ]]; then
    echo "error: the page did not render (no result from the probe)" >&2
    exit 1
fi
echo "rendered: $result"
echo "screenshot: $shot"
python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
problems = []
if r["nodes"] == 0: problems.append("the graph has no laid-out node boxes")
if r["rows"] == 0: problems.append("the layer table has no rows")
if r["rows"] != r["nodes"]: problems.append(f"{r['rows']} table rows but {r['nodes']} graph nodes")
if r["decoded"] != r["images"]: problems.append(f"only {r['decoded']} of {r['images']} pictures decoded")
if problems:
    print("error: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
PY
