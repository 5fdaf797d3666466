//! The launch files read statically (tests/ros2_cli.rs runs them with the real `ros2 launch`): a Python peer
//! reads both (ast, ElementTree), and this test checks they start the node the package builds, take the same
//! arguments, and pass only parameters the node knows, all documented in config/inspector.yaml, whose values the
//! node accepts.
#![cfg(feature = "ros")]

use std::collections::BTreeSet;
use std::process::Command;

use inspect3d::inspector::config::{InspectorConfig, ParamValue};

mod common;
use common::repo;

fn yaml_parameters() -> serde_yaml::Mapping {
    let text = std::fs::read_to_string(repo().join("config/inspector.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["/**"]["ros__parameters"].as_mapping().expect("/**: ros__parameters: in config/inspector.yaml").clone()
}

#[test]
fn the_yaml_documents_every_parameter_and_validates() {
    let yaml = yaml_parameters();
    let names: BTreeSet<&str> = yaml.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, InspectorConfig::NAMES.into_iter().collect(), "YAML and node disagree on parameter names");
    let params: Vec<(&str, ParamValue)> = yaml
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_yaml::Value::String(s) => ParamValue::String(s.clone()),
                serde_yaml::Value::Bool(b) => ParamValue::Bool(*b),
                serde_yaml::Value::Number(n) if n.is_i64() => ParamValue::Integer(n.as_i64().unwrap()),
                serde_yaml::Value::Number(n) => ParamValue::Double(n.as_f64().unwrap()),
                serde_yaml::Value::Sequence(items) => {
                    ParamValue::StringArray(items.iter().map(|i| i.as_str().unwrap().to_string()).collect())
                }
                _ => ParamValue::Other("other"),
            };
            (k.as_str().unwrap(), value)
        })
        .collect();
    InspectorConfig::from_params(params).unwrap();
}

#[test]
fn both_launch_files_start_the_node_with_known_parameters() {
    let out = Command::new("python3")
        .arg(repo().join("tests/peers/launch_files.py"))
        .arg(repo().join("launch/inspector.launch.py"))
        .arg(repo().join("launch/inspector.launch.xml"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (py, xml) = (&files["py"], &files["xml"]);
    assert_eq!(py["arguments"], xml["arguments"], "the twins take different arguments");
    assert_eq!(py["parameters"], xml["parameters"]);
    assert_eq!(py["remappings"], xml["remappings"]);
    let yaml = yaml_parameters();
    let executable = std::path::Path::new(env!("CARGO_BIN_EXE_inspect3d_node")).file_name().unwrap();
    for launch in [py, xml] {
        assert_eq!(launch["package"], "inspect3d");
        assert_eq!(launch["executable"].as_str().unwrap(), executable.to_str().unwrap());
        assert_eq!(launch["params_files"], serde_json::json!(["$(var params_file)"]));
        for name in launch["parameters"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(InspectorConfig::NAMES.contains(&name), "launch passes unknown parameter {name}");
            assert!(yaml.contains_key(name), "{name} is not in config/inspector.yaml");
        }
        // The input topic is a parameter, not a remap: results name the topic the node really subscribed to.
        assert!(launch["remappings"].as_array().unwrap().is_empty(), "{launch}");
        assert!(launch["parameters"].as_array().unwrap().contains(&serde_json::json!("input_topic")));
    }
    let args: Vec<&str> = py["arguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["device", "input_topic", "model_path", "models_dir", "params_file"]);
}

#[test]
fn the_rviz_config_shows_the_node_outputs_by_their_default_names() {
    let text = std::fs::read_to_string(repo().join("config/inspect3d.rviz")).unwrap();
    let rviz: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let displays = rviz["Visualization Manager"]["Displays"].as_sequence().unwrap();
    let topic_of = |class: &str| {
        let display = displays.iter().find(|d| d["Class"] == class).unwrap_or_else(|| panic!("no {class} display"));
        (display["Topic"]["Value"].as_str().unwrap().to_string(), display.clone())
    };
    let defaults = InspectorConfig::default();
    let resolved = |topic: &str| topic.replacen("~", "/inspect3d_node", 1);
    let (cloud_topic, cloud) = topic_of("rviz_default_plugins/PointCloud2");
    assert_eq!(cloud_topic, resolved(&defaults.anomaly_cloud_topic));
    assert_eq!(cloud["Channel Name"], inspect3d::inspector::SCORE_FIELD);
    let (markers_topic, _) = topic_of("rviz_default_plugins/MarkerArray");
    assert_eq!(markers_topic, resolved(&defaults.defects_topic));
}
