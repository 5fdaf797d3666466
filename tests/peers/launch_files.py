"""Reads launch/inspector.launch.py and launch/inspector.launch.xml without running them (`ros2 launch` is not
on PyPI) and prints, as JSON, what each would start: launch arguments, package, executable, node name, the
parameter names it passes beside the params file, the params-file argument, and remappings."""
import ast
import json
import sys
import xml.etree.ElementTree as ET


def name_of(call):
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def text(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call) and name_of(node) == "LaunchConfiguration":
        return "$(var %s)" % node.args[0].value
    return "<expression>"


def python_launch(path):
    tree = ast.parse(open(path).read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    out = {"arguments": sorted(c.args[0].value for c in calls if name_of(c) == "DeclareLaunchArgument")}
    (node,) = [c for c in calls if name_of(c) == "Node"]
    kw = {k.arg: k.value for k in node.keywords}
    out.update(package=text(kw["package"]), executable=text(kw["executable"]), name=text(kw["name"]))
    out["params_files"], out["parameters"] = [], []
    for item in kw["parameters"].elts:
        if isinstance(item, ast.Dict):
            out["parameters"] += [k.value for k in item.keys]
        else:
            out["params_files"].append(text(item))
    remaps = kw.get("remappings")
    out["remappings"] = [[text(a), text(b)] for a, b in (t.elts for t in remaps.elts)] if remaps else []
    return out


def xml_launch(path):
    root = ET.parse(path).getroot()
    out = {"arguments": sorted(a.get("name") for a in root.findall("arg"))}
    (node,) = root.findall("node")
    out.update(package=node.get("pkg"), executable=node.get("exec"), name=node.get("name"))
    params = node.findall("param")
    out["params_files"] = [p.get("from") for p in params if p.get("from")]
    out["parameters"] = [p.get("name") for p in params if p.get("name")]
    out["remappings"] = [[r.get("from"), r.get("to")] for r in node.findall("remap")]
    return out


print(json.dumps({"py": python_launch(sys.argv[1]), "xml": xml_launch(sys.argv[2])}))
