#!/usr/bin/env bash
# Draws ns/op by engine and workload from a peer_bench .dat file as a bar
# chart (gnuplot, from Debian's gnuplot-nox): SVG, or PNG when OUT ends in .png.
#   bench/plot.sh bench/results/results-N1M.dat [OUT.svg] [TITLE]
set -euo pipefail
dat=${1:?usage: bench/plot.sh RESULTS.dat [OUT.svg] [TITLE]}
out=${2:-${dat%.dat}.svg}
title=${3:-"peer_bench: $(basename "${dat%.dat}")"}
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot not found; run .ci/install-deps bench" >&2; exit 1; }
[ -r "$dat" ] || { echo "plot.sh: cannot read $dat" >&2; exit 1; }
ncols=$(head -1 "$dat" | awk -F'\t' '{print NF}')
terminal='svg size 1200,560 dynamic font "sans,12" background "white"'
case "$out" in *.png) terminal='pngcairo size 1200,560 font "sans,10" background "white"' ;; esac
gnuplot <<EOF
set terminal $terminal
set output "$out"
set termoption noenhanced
set datafile separator "\t"
set linetype 1 lc rgb "#d62728"
set linetype 2 lc rgb "#7f7f7f"
set linetype 3 lc rgb "#1f77b4"
set linetype 4 lc rgb "#ff7f0e"
set linetype 5 lc rgb "#bcbd22"
set linetype 6 lc rgb "#2ca02c"
set linetype 7 lc rgb "#17becf"
set linetype 8 lc rgb "#9467bd"
set linetype 9 lc rgb "#8c564b"
set linetype cycle 9
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [10:*]
set ylabel "ns per operation (log scale, lower is faster)"
set grid ytics
set key outside right top
set title "$title"
set xtics nomirror
plot for [i=2:$ncols] "$dat" using i:xtic(1) title columnheader(i)
EOF
echo "plot.sh: wrote $out" >&2
