"""``protonet draw``: the SVG, HTML and PNG pictures of a net (fast checks that parse what is
written), and the HTML page in a real headless browser (``slow``: needs Chromium)."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

import protonet
from protonet import cli
from protonet.draw import BLOB_COLOR, DEFAULT_COLOR, NEURON_COLOR, TYPE_COLORS, picture, render_html, render_svg

ROOT = Path(__file__).resolve().parent.parent
NETS = ROOT / "nets"
SVG = "{http://www.w3.org/2000/svg}"


def boxes_of(svg: ET.Element) -> dict[str, list[str]]:
    """Box id -> the layers drawn in it (its bands' data-layer), for layer boxes."""
    return {g.get("id"): [b.get("data-layer") for b in g.iter(f"{SVG}g") if b.get("class") == "layer"]
            for g in svg.iter(f"{SVG}g") if g.get("class") == "node"}


def edges_of(svg: ET.Element) -> set[tuple[str, str]]:
    return {(p.get("data-from"), p.get("data-to")) for p in svg.iter(f"{SVG}path") if p.get("class") == "edge"}


def folded_heads(graph) -> dict[str, str]:
    """The documented folding rule, restated: an in-place layer (one bottom, one top, the same
    blob) joins the box of its bottom's producer when that version of the blob feeds nothing else."""
    head: dict[str, str] = {}
    for n in graph.nodes:
        v = n.inputs[0] if len(n.inputs) == 1 else None
        ok = (v is not None and len(n.outputs) == 1 and n.outputs[0].blob == v.blob and v.producer is not None
              and len(v.users) == 1)
        head[n.name] = head[v.producer.name] if ok else n.name
    return head


def check_drawing(graph, svg: ET.Element) -> None:
    """Every layer is drawn exactly once, boxes group the layers as the rule says, and the edges
    are the graph's dataflow between boxes plus one edge to each output blob."""
    boxes = boxes_of(svg)
    drawn = [name for layers in boxes.values() for name in layers]
    assert sorted(drawn) == sorted(n.name for n in graph.nodes)
    head = folded_heads(graph)
    box = {name: bid for bid, layers in boxes.items() for name in layers}
    for bid, layers in boxes.items():
        assert {head[n] for n in layers} == {layers[0]}, bid
    want = {(box[v.producer.name], box[n.name]) for n in graph.nodes for v in n.inputs
            if v.producer is not None and box[v.producer.name] != box[n.name]}
    blobs = {g.get("id"): g for g in svg.iter(f"{SVG}g") if g.get("class") == "blob"}
    assert len(blobs) == len(graph.outputs)
    got = edges_of(svg)
    to_blobs = {e for e in got if e[1] in blobs}
    assert got - to_blobs == want
    assert sorted(e[0] for e in to_blobs) == sorted(box[v.producer.name] for v in graph.outputs)


def test_lenet_svg_by_hand(tmp_path):
    """LeNet: eight boxes in a chain, relu1 folded under ip1 (Caffe's in-place ReLU), the prob blob
    as an octagon; colours as Caffe's draw.py; every box centred on one vertical line."""
    assert cli.main(["draw", str(NETS / "lenet.prototxt"), "-o", str(tmp_path / "n.svg")]) == 0
    svg = ET.parse(tmp_path / "n.svg").getroot()
    boxes = boxes_of(svg)
    assert list(boxes.values()) == [["data"], ["conv1"], ["pool1"], ["conv2"], ["pool2"], ["ip1", "relu1"],
                                    ["ip2"], ["prob"]]
    ids = list(boxes)
    assert edges_of(svg) == set(zip(ids, ids[1:])) | {(ids[-1], "n8")}
    fills = {g.get("id"): [r.get("fill") for r in g.iter(f"{SVG}rect")] for g in svg.iter(f"{SVG}g")
             if g.get("class") == "node"}
    assert [fills[i] for i in ids] == [[DEFAULT_COLOR], ["#FF5050"], ["#FF9900"], ["#FF5050"], ["#FF9900"],
                                       ["#CC33FF", NEURON_COLOR], ["#CC33FF"], [DEFAULT_COLOR]]
    texts = {g.get("id"): [t.text for t in g.iter(f"{SVG}text")] for g in svg.iter(f"{SVG}g")
             if g.get("class") == "node"}
    # conv1: 20*1*5*5 + 20 = 520 params, 20*24*24*25 = 288,000 MACs
    assert texts[ids[1]] == ["conv1", "Convolution", "1x20x24x24", "520 params | 288.00k MACs"]
    assert texts[ids[5]][-1] == "relu1 (ReLU)"
    blob = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "blob")
    assert [t.text for t in blob.iter(f"{SVG}text")] == ["prob", "1x10"]
    assert blob.find(f"{SVG}polygon").get("fill") == BLOB_COLOR
    pic = picture(protonet.compile(NETS / "lenet.prototxt", optimize=False).graph)
    assert len({round(b.x, 3) for b in pic.boxes}) == 1


@pytest.mark.parametrize("net", ["googlenet", "resnet18", "squeezenet1_1", "mobilenet_v2"])
def test_nets_are_drawn_whole_and_disjoint(net):
    """Branching nets: every layer and dataflow edge drawn (the folding rule restated in the test);
    no two boxes overlap; every edge runs downwards."""
    m = protonet.compile(NETS / f"{net}.prototxt", optimize=False)
    pic = picture(m.graph)
    check_drawing(m.graph, ET.fromstring(render_svg(pic)))
    for i, a in enumerate(pic.boxes):
        for b in pic.boxes[i + 1:]:
            apart_x = abs(a.x - b.x) >= (a.width + b.width) / 2
            apart_y = a.y + a.height <= b.y or b.y + b.height <= a.y
            assert apart_x or apart_y, (a.bands[0].layer, b.bands[0].layer)
    for e in pic.edges:
        ys = [p[1] for p in e.points]
        assert ys == sorted(ys) and ys[0] < ys[-1]


def test_in_place_layer_read_before_it_runs_gets_its_own_box(tmp_path):
    """'side' reads conv's blob before the in-place ReLU changes it, so the ReLU cannot be folded
    onto conv's box: it is drawn beside it, as its own green box."""
    net = tmp_path / "n.prototxt"
    net.write_text('input: "x"\ninput_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
                   'layer { name: "conv" type: "Convolution" bottom: "x" top: "c" '
                   'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                   'layer { name: "side" type: "Pooling" bottom: "c" top: "s" pooling_param { pool: MAX kernel_size: 1 } }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n'
                   'layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "s" top: "y" }\n')
    m = protonet.compile(net, optimize=False)
    svg = ET.fromstring(render_svg(picture(m.graph)))
    check_drawing(m.graph, svg)
    boxes = boxes_of(svg)
    assert ["relu"] in boxes.values() and ["conv"] in boxes.values()
    relu = next(g for g in svg.iter(f"{SVG}g") if g.get("data-layer") == "relu")
    assert relu.find(f"{SVG}rect").get("fill") == NEURON_COLOR


def test_optimized_draws_fused_activations_as_bands(tmp_path):
    assert cli.main(["draw", str(NETS / "lenet.prototxt"), "--optimized", "-o", str(tmp_path / "o.svg")]) == 0
    svg = ET.parse(tmp_path / "o.svg").getroot()
    assert ["ip1", "relu1"] in boxes_of(svg).values()
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "InnerProduct+ReLU" in texts and "relu1 (ReLU, fused)" in texts


def test_html_is_one_self_contained_page(tmp_path):
    """The page holds the SVG (valid XML, the same drawing), the details of every layer as JSON,
    and its own script: no URL is loaded from anywhere."""
    out = tmp_path / "g.html"
    assert cli.main(["draw", str(NETS / "googlenet.prototxt"), "-o", str(out)]) == 0
    html = out.read_text()
    svg = ET.fromstring(re.search(r"<svg .*?</svg>", html, re.S).group(0))
    m = protonet.compile(NETS / "googlenet.prototxt", optimize=False)
    check_drawing(m.graph, svg)
    data = json.loads(re.search(r'<script type="application/json" id="layers">(.*?)</script>', html, re.S).group(1))
    assert set(data) == {n.name for n in m.graph.nodes}
    conv = data["conv1/7x7_s2"]
    # 64*3*7*7 + 64 params; 64*112*112 * 3*7*7 MACs
    assert (conv["type"], conv["params"], conv["macs"], conv["outputs"]) == (
        "Convolution", 9472, 118013952, [["conv1/7x7_s2", "1x64x112x112"]])
    assert re.findall(r"""(?:src|href)\s*=""", html) == []
    assert re.findall(r"https?://", html) == ["http://"]  # the SVG namespace, which nothing fetches
    assert "<link" not in html and "@import" not in html and "url(" not in html.replace("url(#arrow)", "")


def test_hostile_names_stay_text(tmp_path):
    """Layer and blob names from a prototxt are text in every output: markup in a name neither
    breaks the SVG's XML nor closes the page's script, and control characters are escaped."""
    name = '</script><script>alert(1)</script>&"\x01'
    net = tmp_path / "n.prototxt"
    net.write_text('input: "x"\ninput_shape { dim: 1 dim: 3 }\n'
                   'layer { name: "</script><script>alert(1)</script>&\\"\\001" type: "ReLU" bottom: "x" '
                   'top: "y<&>" }\n')
    m = protonet.compile(net)
    html = render_html(picture(m.graph))
    assert html.count("</script>") == 2 and "<script>alert" not in html
    svg = ET.fromstring(re.search(r"<svg .*?</svg>", html, re.S).group(0))
    assert [b.get("data-layer") for b in svg.iter(f"{SVG}g") if b.get("class") == "layer"][-1] == \
        '</script><script>alert(1)</script>&"\\x01'
    data = json.loads(re.search(r'id="layers">(.*?)</script>', html, re.S).group(1))
    assert name in data


def test_png_is_drawn_with_pillow(tmp_path):
    out = tmp_path / "g.png"
    assert cli.main(["draw", str(NETS / "googlenet.prototxt"), "-o", str(out)]) == 0
    img = Image.open(out).convert("RGB")
    w, h = img.size
    assert h > 3 * w > 1000  # a tall, layered picture
    colors = {"#%02X%02X%02X" % rgb for _, rgb in img.getcolors(maxcolors=1 << 22)}
    assert {TYPE_COLORS["Convolution"], TYPE_COLORS["Pooling"], TYPE_COLORS["InnerProduct"], DEFAULT_COLOR,
            NEURON_COLOR, BLOB_COLOR} <= colors


def test_dynamic_batch_is_drawn_as_n(tmp_path):
    """``--batch dynamic``: the batch dimension of every shape is drawn as N (LeNet's ip1: N x 500)."""
    assert cli.main(["draw", str(NETS / "lenet.prototxt"), "--batch", "dynamic", "-o", str(tmp_path / "d.html")]) == 0
    html = (tmp_path / "d.html").read_text()
    svg = ET.fromstring(re.search(r"<svg .*?</svg>", html, re.S).group(0))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "Nx1x28x28" in texts and "Nx500" in texts and not any(re.fullmatch(r"1x[0-9x]+", t) for t in texts)
    data = json.loads(re.search(r'id="layers">(.*?)</script>', html, re.S).group(1))
    assert data["ip1"]["outputs"] == [["ip1", "Nx500"]]


def test_bad_extension_and_api(tmp_path, capsys):
    assert cli.main(["draw", str(NETS / "lenet.prototxt"), "-o", str(tmp_path / "n.pdf")]) == 2
    assert "n.pdf: cannot tell the picture's format from the extension '.pdf'" in capsys.readouterr().err
    assert not (tmp_path / "n.pdf").exists()
    path = protonet.compile(NETS / "lenet.prototxt").draw(tmp_path / "api.svg")
    assert ["ip1", "relu1"] in boxes_of(ET.parse(path).getroot()).values()


@pytest.mark.slow
def test_html_in_chromium(tmp_path):
    """The page in headless Chromium: after it fitted itself every box is in view, the #LAYER link
    opens that layer's details, the wheel zooms about the cursor, a drag pans, a click opens a
    layer's details, and the screenshot shows every layer colour (tools/draw_check.py; needs
    Chromium: apt-get install chromium)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("draw_check", ROOT / "tools" / "draw_check.py")
    draw_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw_check)
    draw_check.browser()  # raises (the test fails) when there is no Chromium
    for net in ("lenet", "googlenet"):
        page = tmp_path / f"{net}.html"
        assert cli.main(["draw", str(NETS / f"{net}.prototxt"), "-o", str(page)]) == 0
        assert draw_check.check_page(page, tmp_path / f"{net}.png") == []
