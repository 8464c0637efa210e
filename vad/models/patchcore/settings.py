"""How PatchCore's memory bank is searched: shared by the torch scorer and the exported runtime (no torch here)."""

from __future__ import annotations

QUERY_BLOCK = 2048  # query patches per distance block at most: 2048 x bank rows x 4 bytes at a time
# ... and at most this many bytes of distances per block, so a large bank's block stays small (a 288,000-row bank:
# 58 queries a block, not 2,048, which held 2.4 GB)
BLOCK_BYTES = 64 * 1024 * 1024
# From this many queries faiss's brute-force search beats torch's blocked product on this CPU (4,096 queries:
# 1.6-2.3x faster); with fewer it is slower (800 queries: 1.7-1.9x slower), so small sets stay in torch.
FAISS_MIN_QUERIES = 2048
# Lists visited per query for a map. A fixed count keeps the search cost from growing with the bank: on a
# 1,024,000-row bank (4,096 lists) 16 probes found the exact nearest row for 99.9% of patches and the same image
# maxima as 128 probes (1/32 of the lists), 9x faster; on a 20,480-row bank (512 lists) the recall was 0.992.
IVF_PROBES = 16
# Lists visited per query when only image scores are wanted: the distances are upper bounds that decide which
# patches are searched exactly (more probes: tighter bounds and fewer exact patches, at a higher list cost).
BOUND_PROBES = 2
# Lists visited to tighten the bounds of the patches the highest pixels depend on, before any of them is searched
# exactly (default setting, 20,480-row bank: 25 exact patches per image instead of 98; 16 probes cost about 1/30
# of an exact search, and 8 or 32 were no faster in total).
REFINE_PROBES = 16
EXACT_MAP_ROWS = 8192  # smaller banks get exact maps (one matrix product); larger ones inverted-file maps
BOUND_MIN_ROWS = 2048  # smaller banks are searched exactly, whatever is asked (the product costs little)
ROWS_PER_LIST = 40  # about 40 bank rows per inverted list (faiss wants >= 39 k-means points per centroid)
MAX_LISTS = 4096
