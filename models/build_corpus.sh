#!/usr/bin/env bash
# Build the training corpus of the bundled models from Debian packages of recorded speech.
#
#   bash models/build_corpus.sh [OUT_DIR]      (default: ./corpus; needs apt-get, dpkg, and
#                                               ffmpeg on PATH or `pip install imageio-ffmpeg`)
#
# No root install: the packages are fetched with `apt-get download` and unpacked with `dpkg -x`.
# Only speech is kept:
#   tuxpaint-stamps-default        spoken stamp names/descriptions (*_<lang>.ogg, *_desc_<lang>.ogg;
#                                  the sound effects without a language suffix are left out), 44.1 kHz
#   fillets-ng-data-cs, -nl        Czech and Dutch voice acting (sound/<level>/<cs|nl>/*.ogg), 22.05 kHz
#   asterisk-core-sounds-{es,fr,it,ru}-g722
#                                  telephone prompts, raw G.722 -> 16 kHz WAV with ffmpeg
# The tree it writes keeps one folder per speaker/level/stamp group, so `train-hyper` and
# `train-ae` can hold out whole folders for validation.
set -euo pipefail
OUT=$(realpath -m "${1:-corpus}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKGS="tuxpaint-stamps-default fillets-ng-data-cs fillets-ng-data-nl asterisk-core-sounds-es-g722
asterisk-core-sounds-fr-g722 asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722"
FFMPEG=$(command -v ffmpeg || python3 -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())" 2>/dev/null) \
  || { echo "error: ffmpeg not found; install it or run: pip install imageio-ffmpeg" >&2; exit 1; }
mkdir -p "$OUT"
cd "$WORK"
for p in $PKGS; do apt-get download "$p" >/dev/null 2>&1 || { echo "error: apt-get download $p failed" >&2; exit 1; }; done
for deb in *.deb; do dpkg -x "$deb" root; done
# tuxpaint: stamp groups as folders, spoken files only
find root/usr/share/tuxpaint/stamps -name '*.ogg' | grep -E '_(desc_)?[a-z]{2}(_[A-Za-z]{2})?\.ogg$' | while read -r f; do
  rel=${f#root/usr/share/tuxpaint/stamps/}; mkdir -p "$OUT/tuxpaint/$(dirname "$rel")"; cp "$f" "$OUT/tuxpaint/$rel"
done
# fillets-ng: one folder per level and language
for lang in cs nl; do
  find root/usr/share/games/fillets-ng/sound -path "*/$lang/*.ogg" | while read -r f; do
    level=$(basename "$(dirname "$(dirname "$f")")"); mkdir -p "$OUT/fillets-$lang/$level"; cp "$f" "$OUT/fillets-$lang/$level/"
  done
done
# asterisk: raw G.722 at 16 kHz -> WAV, one folder per voice and sub-folder
find root/usr/share/asterisk/sounds -name '*.g722' | while read -r f; do
  rel=${f#root/usr/share/asterisk/sounds/}; dest="$OUT/asterisk/${rel%.g722}.wav"; mkdir -p "$(dirname "$dest")"
  "$FFMPEG" -nostdin -loglevel error -y -f g722 -i "$f" -ar 16000 -ac 1 "$dest"
done
echo "corpus in $OUT: $(find "$OUT" -type f | wc -l) files, $(du -sh "$OUT" | cut -f1)"
