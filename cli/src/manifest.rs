//! Agents and workflows as YAML documents a team keeps in git, read with every node's place in
//! the file so an error can name `file:line:column` and the field.
//!
//! A file holds one or more documents (`---` between them), each `kind: Agent` or
//! `kind: Workflow` with the fields of the API's body (`POST /v1/agents`, `POST /v1/workflows`,
//! camelCase). A workflow may name its agents by name where the API wants ids
//! (`participatingAgents`, `coordinatorAgentId`, `configuration.steps[].preferredAgentId`);
//! `apply` resolves them. A workflow may instead be made from a template (`template`, and
//! `agents` mapping each of its roles to an agent: `POST /v1/templates/{id}/workflows`'s body).
//!
//! YAML is read with `serde-saphyr`: maintained, pure Rust with `#![forbid(unsafe_code)]`, built
//! for panic-free parsing and located errors, and able to give each value's location
//! ([`serde_saphyr::Spanned`]). `serde_yaml` is archived, `serde_yml` has had soundness
//! advisories, and `serde_norway` keeps `serde_yaml`'s C-to-Rust translated `unsafe` libyaml.
//!
//! Each document is read once into a tree of located nodes, from which come both its JSON value
//! and a map from every JSON pointer in it to where that node starts. Typed checks then run on
//! the JSON value (with `serde_path_to_error` for the path, `serde_ignored` for unknown fields),
//! and the pointer of any error, ours or one an API problem names, finds its line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize as DeriveDeserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

use cadre_proto::model::{
    AgentProfile, ModelChoice, ModelParameters, WorkflowConfiguration, WorkflowType,
};
use cadre_proto::shape::{self, UNKNOWN_FIELD, escape, pointer_of, pointer_of_ignored};
use cadre_proto::{AgentId, WorkflowId};

/// Where in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub line: u64,
    pub column: u64,
}

impl From<serde_saphyr::Location> for Place {
    fn from(location: serde_saphyr::Location) -> Self {
        Self {
            line: location.line(),
            column: location.column(),
        }
    }
}

/// Something wrong in a file, where it is and which field.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub file: String,
    pub place: Option<Place>,
    /// The field as a path (`configuration.steps[1].dependsOn`); absent for the document
    /// itself or a syntax error.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(place) = self.place {
            write!(f, ":{}:{}", place.line, place.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A JSON pointer (`/configuration/steps/1/dependsOn`) as a person reads a path in YAML
/// (`configuration.steps[1].dependsOn`).
pub fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

/// A YAML node as read, each child with where it starts.
#[derive(Debug)]
enum Node {
    Scalar(Value),
    /// An infinity or NaN (`.inf`, `.nan`, or a number like `1e309` beyond a 64-bit float):
    /// valid YAML that JSON, and so the API, cannot carry.
    NotJson(f64),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(serde_json::Number::from_f64(v)
            .map_or(Node::NotJson(v), |n| Node::Scalar(Value::Number(n))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let key_place = key.referenced;
            let key = match key.value {
                Node::Scalar(Value::String(key)) => key,
                Node::Scalar(other) => other.to_string(),
                // A key is a name, not a number to send.
                Node::NotJson(number) => number.to_string(),
                _ => return Err(de::Error::custom("a mapping key must be a plain value")),
            };
            let mut value = map.next_value::<Spanned<Node>>()?;
            // A field is where its key is: a nested value starts on the lines below it.
            value.referenced = key_place;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("the key '{key}' appears twice")));
            }
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Where a document's nodes start, by JSON pointer, and the pointers of the numbers JSON
/// cannot carry.
#[derive(Default)]
struct Located {
    places: BTreeMap<String, Place>,
    not_json: Vec<(String, f64)>,
}

/// Turns a located tree into its JSON value (a number JSON cannot carry becomes null, and is
/// recorded in `located`), recording where each pointer's node starts.
fn flatten(node: Spanned<Node>, pointer: String, located: &mut Located) -> Value {
    located
        .places
        .insert(pointer.clone(), node.referenced.into());
    match node.value {
        Node::Scalar(value) => value,
        Node::NotJson(number) => {
            located.not_json.push((pointer, number));
            Value::Null
        }
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, format!("{pointer}/{i}"), located))
                .collect(),
        ),
        Node::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(key, value)| {
                    let child = format!("{pointer}/{}", escape(&key));
                    (key, flatten(value, child, located))
                })
                .collect(),
        ),
    }
}

/// Why `number` (an infinity or NaN as YAML reads it) cannot be sent.
fn not_json_message(number: f64) -> String {
    let what = if number.is_nan() {
        "NaN (.nan)"
    } else if number > 0.0 {
        "infinity (.inf, or a number beyond a 64-bit float: about 1.8e308 at most)"
    } else {
        "minus infinity (-.inf, or a number beyond a 64-bit float: about -1.8e308 at least)"
    };
    format!("{what} is not a number the API can take: JSON has no infinity or NaN")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Agent,
    Workflow,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Workflow => "workflow",
        }
    }
}

/// An agent as a document declares it: `POST /v1/agents`'s body.
#[derive(Debug, Clone, PartialEq, DeriveDeserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub backstory: String,
    #[serde(default)]
    pub skills: Vec<String>,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub model_parameters: ModelParameters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ModelChoice>,
}

impl AgentSpec {
    /// The fields in which a registered agent differs from this declaration (empty: the same).
    pub fn differences(&self, agent: &AgentProfile) -> Vec<&'static str> {
        let mut differ = Vec::new();
        let mut check = |same: bool, field| {
            if !same {
                differ.push(field);
            }
        };
        check(self.role == agent.role, "role");
        check(self.backstory == agent.backstory, "backstory");
        check(self.skills == agent.skills, "skills");
        check(self.provider == agent.provider, "provider");
        check(self.model == agent.model, "model");
        check(
            self.model_parameters == agent.model_parameters,
            "modelParameters",
        );
        check(self.fallback == agent.fallback, "fallback");
        differ
    }
}

/// A workflow as a document declares it: `POST /v1/workflows`'s body, agents by name or id.
#[derive(Debug, Clone, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub workflow_type: WorkflowType,
    pub participating_agents: Vec<String>,
    #[serde(default)]
    pub coordinator_agent_id: Option<String>,
    /// Checked as a [`WorkflowConfiguration`] when read (agent names stood in for), and turned
    /// into one once its agent names are resolved.
    pub configuration: Value,
}

/// A workflow made from a template: `POST /v1/templates/{id}/workflows`'s body, with the
/// template and the agents by name or id.
#[derive(Debug, Clone, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct FromTemplateSpec {
    pub name: String,
    /// The template's when absent.
    #[serde(default)]
    pub description: Option<String>,
    /// The template's name or id.
    pub template: String,
    /// Each role of the template, and the agent that takes it.
    pub agents: BTreeMap<String, String>,
    #[serde(default)]
    pub coordinator_agent_id: Option<String>,
}

/// `POST /v1/workflows`'s body with ids, as sent, and as an existing workflow is compared.
#[derive(Debug, Clone, PartialEq, DeriveDeserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowBody {
    pub name: String,
    pub description: String,
    pub workflow_type: WorkflowType,
    pub participating_agents: Vec<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_agent_id: Option<AgentId>,
    pub configuration: WorkflowConfiguration,
}

impl WorkflowBody {
    /// The fields in which an existing workflow differs (empty: the same).
    pub fn differences(&self, other: &WorkflowBody) -> Vec<&'static str> {
        let mut differ = Vec::new();
        let mut check = |same: bool, field| {
            if !same {
                differ.push(field);
            }
        };
        check(self.description == other.description, "description");
        check(self.workflow_type == other.workflow_type, "workflowType");
        check(
            self.participating_agents == other.participating_agents,
            "participatingAgents",
        );
        check(
            self.coordinator_agent_id == other.coordinator_agent_id,
            "coordinatorAgentId",
        );
        check(self.configuration == other.configuration, "configuration");
        differ
    }
}

/// Where a workflow names an agent: the pointer and the name or id written there.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRef {
    pub pointer: String,
    pub reference: String,
}

#[derive(Debug, Clone)]
pub enum Spec {
    Agent(AgentSpec),
    Workflow(WorkflowSpec),
    FromTemplate(FromTemplateSpec),
}

/// One document of a file: what it declares, and where each of its fields is.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    pub spec: Spec,
    places: BTreeMap<String, Place>,
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::Agent(_) => Kind::Agent,
            Spec::Workflow(_) | Spec::FromTemplate(_) => Kind::Workflow,
        }
    }

    pub fn name(&self) -> &str {
        match &self.spec {
            Spec::Agent(agent) => &agent.name,
            Spec::Workflow(workflow) => &workflow.name,
            Spec::FromTemplate(workflow) => &workflow.name,
        }
    }

    /// Where the node at `pointer` starts, or the nearest enclosing node that the file has (a
    /// missing field is reported at the object that lacks it).
    pub fn place(&self, pointer: &str) -> Option<Place> {
        let mut at = pointer;
        loop {
            if let Some(place) = self.places.get(at) {
                return Some(*place);
            }
            at = &at[..at.rfind('/')?];
        }
    }

    /// An error about the field at `pointer`, placed in the file.
    pub fn error_at(&self, pointer: &str, message: impl Into<String>) -> FileError {
        let field = field_path(pointer);
        FileError {
            file: self.file.clone(),
            place: self.place(pointer),
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }

    /// An error about the document as a whole.
    pub fn error(&self, message: impl Into<String>) -> FileError {
        self.error_at("", message)
    }

    /// Every place this workflow names an agent, in document order.
    pub fn agent_refs(&self) -> Vec<AgentRef> {
        match &self.spec {
            Spec::Agent(_) => vec![],
            Spec::Workflow(workflow) => agent_refs(workflow),
            Spec::FromTemplate(workflow) => workflow
                .agents
                .iter()
                .map(|(role, reference)| AgentRef {
                    pointer: format!("/agents/{}", escape(role)),
                    reference: reference.clone(),
                })
                .chain(
                    workflow
                        .coordinator_agent_id
                        .iter()
                        .map(|reference| AgentRef {
                            pointer: "/coordinatorAgentId".into(),
                            reference: reference.clone(),
                        }),
                )
                .collect(),
        }
    }
}

fn agent_refs(workflow: &WorkflowSpec) -> Vec<AgentRef> {
    let mut refs: Vec<AgentRef> = workflow
        .participating_agents
        .iter()
        .enumerate()
        .map(|(i, reference)| AgentRef {
            pointer: format!("/participatingAgents/{i}"),
            reference: reference.clone(),
        })
        .collect();
    if let Some(reference) = &workflow.coordinator_agent_id {
        refs.push(AgentRef {
            pointer: "/coordinatorAgentId".into(),
            reference: reference.clone(),
        });
    }
    if let Some(steps) = workflow.configuration["steps"].as_array() {
        for (i, step) in steps.iter().enumerate() {
            if let Some(reference) = step["preferredAgentId"].as_str() {
                refs.push(AgentRef {
                    pointer: format!("/configuration/steps/{i}/preferredAgentId"),
                    reference: reference.to_owned(),
                });
            }
        }
    }
    refs
}

impl WorkflowSpec {
    /// The body to send, with each agent reference replaced by the id `resolve` gives it.
    pub fn body(
        &self,
        mut resolve: impl FnMut(&str) -> AgentId,
    ) -> Result<WorkflowBody, serde_json::Error> {
        let mut configuration = self.configuration.clone();
        if let Some(steps) = configuration["steps"].as_array_mut() {
            for step in steps {
                if let Some(reference) = step["preferredAgentId"].as_str() {
                    step["preferredAgentId"] = Value::String(resolve(reference).to_string());
                }
            }
        }
        Ok(WorkflowBody {
            name: self.name.clone(),
            description: self.description.clone(),
            workflow_type: self.workflow_type,
            participating_agents: self
                .participating_agents
                .iter()
                .map(|r| resolve(r))
                .collect(),
            coordinator_agent_id: self.coordinator_agent_id.as_deref().map(&mut resolve),
            configuration: serde_json::from_value(configuration)?,
        })
    }
}

/// Reads `value` as `T` the way the API does: every unknown field is an error, and a wrong
/// type names its field. Errors are `(pointer, message)`: every field of a wrong type (serde
/// stops at the first, so each is left out in turn and the rest read again), every missing and
/// every unknown one, each once.
fn typed<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, Vec<(String, String)>> {
    let mut pruned = Pruned {
        value: value.clone(),
        removed: Vec::new(),
    };
    let mut errors: Vec<(String, String)> = Vec::new();
    loop {
        let mut unknown = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(pointer_of_ignored(&path));
        let parsed: Result<T, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(&pruned.value, &mut record),
        );
        let parsed = parsed
            .map_err(|error| shape::explain(pointer_of(error.path()), &error.inner().to_string()));
        for pointer in unknown {
            let pointer = format!("{prefix}{}", pruned.as_given(&pointer));
            if !errors.iter().any(|(at, _)| *at == pointer) {
                errors.push((pointer, UNKNOWN_FIELD.to_owned()));
            }
        }
        match parsed {
            Ok(parsed) if errors.is_empty() => return Ok(parsed),
            Ok(_) => return Err(errors),
            Err((pointer, message)) => {
                let at = format!("{prefix}{}", pruned.as_given(&pointer));
                // Said already when a field left out for its type is now missing: then the
                // item of a list that holds it goes, so that the rest is read.
                if !errors.iter().any(|(said, _)| *said == at) {
                    errors.push((at, message));
                }
                if errors.len() >= MOST_ERRORS_PER_DOCUMENT || !pruned.leave_out(&pointer) {
                    return Err(errors);
                }
            }
        }
    }
}

/// Most problems said of one document: past these, the file is likely not what it should be.
const MOST_ERRORS_PER_DOCUMENT: usize = 20;

/// A document with what was wrong in it left out, so that reading it again finds the rest,
/// and the pointers of what is left told as they were in the document given.
struct Pruned {
    value: Value,
    /// Each item left out of a list, in order: the list's pointer and the item's index, both
    /// as they were when it was left out.
    removed: Vec<(String, usize)>,
}

impl Pruned {
    /// Leaves out the field at `pointer` (a pointer into `value` as it is now), or, when there
    /// is no such field (a required one is missing) or it is an item of a list, the nearest
    /// item of a list that holds it: the list's later items are still read. False when there
    /// is nothing to leave out (a field missing from the document itself).
    fn leave_out(&mut self, pointer: &str) -> bool {
        if let Some((parent, key)) = pointer.rsplit_once('/')
            && let Some(Value::Object(fields)) = self.value.pointer_mut(parent)
            && fields
                .remove(&key.replace("~1", "/").replace("~0", "~"))
                .is_some()
        {
            return true;
        }
        let mut at = pointer;
        while let Some((parent, key)) = at.rsplit_once('/') {
            if let Some(Value::Array(items)) = self.value.pointer_mut(parent)
                && let Ok(index) = key.parse::<usize>()
                && index < items.len()
            {
                items.remove(index);
                self.removed.push((parent.to_owned(), index));
                return true;
            }
            at = parent;
        }
        false
    }

    /// `pointer` (into `value` as it is now) as it was in the document given: each list item
    /// left out moved the items after it up one.
    fn as_given(&self, pointer: &str) -> String {
        let mut pointer = pointer.to_owned();
        for (list, index) in self.removed.iter().rev() {
            let Some(rest) = pointer
                .strip_prefix(list.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                continue;
            };
            let (item, tail) = rest.split_once('/').map_or((rest, ""), |(i, t)| (i, t));
            if let Ok(item) = item.parse::<usize>()
                && item >= *index
            {
                let tail = if tail.is_empty() {
                    String::new()
                } else {
                    format!("/{tail}")
                };
                pointer = format!("{list}/{}{tail}", item + 1);
            }
        }
        pointer
    }
}

/// The parser's message without what the error already says (`error: line 2 column 7: `).
fn syntax_message(shown: &str) -> String {
    let first = shown.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((place, message)) if place.contains(" column ") => message,
        _ => first,
    };
    // The parser names its own setting ("set DuplicateKeyPolicy in Options if acceptable").
    match message
        .strip_prefix("duplicate mapping key: ")
        .and_then(|rest| rest.split(',').next())
    {
        Some(key) => format!("the key '{key}' appears twice in one mapping: give it once"),
        None => message.to_owned(),
    }
}

/// Reads every document of `text` (from the file `file`), checking each against what the API
/// accepts. All errors are returned, not only the first.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, Vec<FileError>> {
    let error = |place: Option<Place>, field: Option<String>, message: String| FileError {
        file: file.to_owned(),
        place,
        field,
        message,
    };
    // Infinities and NaNs are read as numbers, to be refused at the field they are in.
    let options = serde_saphyr::options! {
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    };
    let trees: Vec<Spanned<Node>> = serde_saphyr::from_str_multiple_with_options(text, options)
        .map_err(|e| {
            vec![error(
                e.location().map(Place::from),
                None,
                syntax_message(&e.to_string()),
            )]
        })?;
    if trees.is_empty() {
        return Err(vec![error(
            None,
            None,
            "no document: expected one or more documents with `kind: Agent` or `kind: Workflow`"
                .into(),
        )]);
    }
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for tree in trees {
        let mut nodes = Located::default();
        let mut value = flatten(tree, String::new(), &mut nodes);
        let places = &nodes.places;
        let located = |pointer: &str, message: String| {
            let mut at = pointer;
            let place = loop {
                if let Some(place) = places.get(at) {
                    break Some(*place);
                }
                match at.rfind('/') {
                    Some(i) => at = &at[..i],
                    None => break None,
                }
            };
            let field = field_path(pointer);
            error(place, (!field.is_empty()).then_some(field), message)
        };
        // Said here, and left out of what is checked next, which then finds the rest.
        let not_json: Vec<(String, String)> = nodes
            .not_json
            .iter()
            .map(|(pointer, number)| (pointer.clone(), not_json_message(*number)))
            .collect();
        // Null in its place: later pointers stay where they were, and what is then said of the
        // null at that pointer is left out below.
        for (pointer, _) in &not_json {
            if let Some(number) = value.pointer_mut(pointer) {
                *number = Value::Null;
            }
        }
        let Some(object) = value.as_object_mut() else {
            errors.push(located(
                "",
                "a document must be a mapping with `kind`".into(),
            ));
            continue;
        };
        let kind = match object.remove("kind") {
            Some(Value::String(kind)) if kind == "Agent" => Kind::Agent,
            Some(Value::String(kind)) if kind == "Workflow" => Kind::Workflow,
            Some(other) => {
                errors.push(located(
                    "/kind",
                    format!("unknown kind {other}: expected Agent or Workflow"),
                ));
                continue;
            }
            None => {
                errors.push(located(
                    "",
                    "this document has no `kind`: give `kind: Agent` or `kind: Workflow`".into(),
                ));
                continue;
            }
        };
        let spec = match kind {
            Kind::Agent => typed::<AgentSpec>(&value, "").map(Spec::Agent),
            Kind::Workflow if value.get("template").is_some() => {
                // Said here, or the fields of the other form would each be "unknown".
                let other: Vec<(String, String)> = ["participatingAgents", "configuration"]
                    .into_iter()
                    .filter(|field| value.get(field).is_some())
                    .map(|field| {
                        (
                            format!("/{field}"),
                            "a workflow made from a template has its template's configuration \
                             and the agents its roles map to: give either `template` and \
                             `agents`, or `participatingAgents` and `configuration`"
                                .to_owned(),
                        )
                    })
                    .collect();
                if other.is_empty() {
                    typed::<FromTemplateSpec>(&value, "").map(Spec::FromTemplate)
                } else {
                    Err(other)
                }
            }
            Kind::Workflow => typed::<WorkflowSpec>(&value, "").and_then(|workflow| {
                // The configuration as the API will read it, with any id standing in for names.
                let stand_in = AgentId(uuid::Uuid::nil());
                let mut configuration = workflow.configuration.clone();
                if let Some(steps) = configuration["steps"].as_array_mut() {
                    for step in steps {
                        if step["preferredAgentId"].is_string() {
                            step["preferredAgentId"] = Value::String(stand_in.to_string());
                        }
                    }
                }
                typed::<WorkflowConfiguration>(&configuration, "/configuration")?;
                Ok(Spec::Workflow(workflow))
            }),
        };
        let spec = match spec {
            Ok(spec) if not_json.is_empty() => Ok(spec),
            Ok(_) => Err(not_json),
            Err(problems) => Err(not_json
                .iter()
                .cloned()
                // A number left out is not said again as missing.
                .chain(
                    problems
                        .into_iter()
                        .filter(|(at, _)| !not_json.iter().any(|(pointer, _)| pointer == at)),
                )
                .collect()),
        };
        match spec {
            Ok(spec) => documents.push(Document {
                file: file.to_owned(),
                spec,
                places: nodes.places,
            }),
            Err(problems) => {
                // In the order of the file, as a person fixes them.
                let mut found: Vec<FileError> = problems
                    .into_iter()
                    .map(|(pointer, message)| located(&pointer, message))
                    .collect();
                found.sort_by_key(|error| error.place);
                errors.extend(found);
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// Reads and checks the documents of every file (`-` is standard input), in order; a name
/// declared twice for one kind is an error at its second place.
pub fn load(paths: &[String]) -> Result<Vec<Document>, Vec<FileError>> {
    let mut documents: Vec<Document> = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = if path == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(Path::new(path))
        };
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                errors.push(FileError {
                    file: path.clone(),
                    place: None,
                    field: None,
                    message: format!("cannot read it: {error}"),
                });
                continue;
            }
        };
        match parse(path, &text) {
            Ok(read) => {
                for document in read {
                    if let Some(first) = documents
                        .iter()
                        .find(|d| d.kind() == document.kind() && d.name() == document.name())
                    {
                        let at = first
                            .place("")
                            .map(|p| format!(":{}", p.line))
                            .unwrap_or_default();
                        errors.push(document.error_at(
                            "/name",
                            format!(
                                "{} '{}' is declared twice (first at {}{at})",
                                document.kind().as_str(),
                                document.name(),
                                first.file
                            ),
                        ));
                        continue;
                    }
                    documents.push(document);
                }
            }
            Err(mut found) => errors.append(&mut found),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// A reference that is an id rather than a name.
pub fn as_agent_id(reference: &str) -> Option<AgentId> {
    reference.parse::<uuid::Uuid>().ok().map(AgentId)
}

/// A reference that is an id rather than a name.
pub fn as_workflow_id(reference: &str) -> Option<WorkflowId> {
    reference.parse::<uuid::Uuid>().ok().map(WorkflowId)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEAM: &str = "\
kind: Agent
name: Ada
role: analyst
skills: [research]
provider: offline
model: offline-deterministic
---
kind: Workflow
name: Study
description: Research, then write up
participatingAgents: [Ada]
configuration:
  steps:
    - id: research
      name: Research
      type: analysis
      description: Look into it.
      preferredAgentId: Ada
      instructions: Find out.
      expectedOutput: Notes.
";

    #[test]
    fn documents_are_read_with_their_kind_and_agent_references() {
        let documents = parse("team.yaml", TEAM).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].kind(), Kind::Agent);
        assert_eq!(documents[1].name(), "Study");
        let refs: Vec<_> = documents[1]
            .agent_refs()
            .into_iter()
            .map(|r| (r.pointer, r.reference))
            .collect();
        assert_eq!(
            refs,
            [
                ("/participatingAgents/0".to_owned(), "Ada".to_owned()),
                (
                    "/configuration/steps/0/preferredAgentId".to_owned(),
                    "Ada".to_owned()
                ),
            ]
        );
        // Line 18 is the second document's `preferredAgentId`.
        assert_eq!(
            documents[1].place("/configuration/steps/0/preferredAgentId"),
            Some(Place {
                line: 18,
                column: 7
            })
        );
    }

    #[test]
    fn a_wrong_type_names_file_line_and_field() {
        let text = TEAM.replace(
            "      instructions: Find out.",
            "      timeoutMinutes: soon",
        );
        let errors = parse("team.yaml", &text).unwrap_err();
        // The step lost its instructions too: both are said, in the file's order.
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "team.yaml:14:7: configuration.steps[0].instructions: this field is required",
                "team.yaml:19:7: configuration.steps[0].timeoutMinutes: expected a number, got \
                 the string \"soon\"",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_each_named() {
        let text = TEAM
            .replace("skills: [research]", "skils: [research]")
            .replace(
                "      type: analysis",
                "      type: analysis\n      dependOn: []",
            );
        let errors = parse("team.yaml", &text).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("team.yaml:4:1: skils: unknown field"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("team.yaml:17:7: configuration.steps[0].dependOn: unknown field"),
            "{shown:?}"
        );
    }

    #[test]
    fn a_missing_field_or_kind_points_at_its_document() {
        let errors = parse("a.yaml", "kind: Agent\nname: Bo\n").unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "a.yaml:1:1: role: this field is required"
        );
        let errors = parse("a.yaml", "---\nname: Bo\n---\nkind: Robot\n").unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(
            errors[0].to_string(),
            "a.yaml:2:1: this document has no `kind`: give `kind: Agent` or `kind: Workflow`"
        );
        assert!(
            errors[1]
                .to_string()
                .starts_with("a.yaml:4:1: kind: unknown kind"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let errors = parse("bad.yaml", "kind: Agent\nname: [unclosed\n").unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "bad.yaml:2:7: unclosed bracket '['",
            "{errors:?}"
        );
        for (number, named) in [
            ("1e309", "infinity"),
            ("-1e400", "minus infinity"),
            (".inf", "infinity"),
            ("-.inf", "minus infinity"),
            (".nan", "NaN"),
        ] {
            // The rest of the document is checked too: it lacks its role.
            let text =
                format!("kind: Agent\nname: Bo\nmodelParameters:\n  temperature: {number}\n");
            let errors = parse("bad.yaml", &text).unwrap_err();
            let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(shown.len(), 2, "{shown:?}");
            assert_eq!(shown[0], "bad.yaml:1:1: role: this field is required");
            assert!(
                shown[1].starts_with("bad.yaml:4:3: modelParameters.temperature: ")
                    && shown[1].contains(&format!(": {named} "))
                    && shown[1].contains("is not a number the API can take"),
                "{shown:?}"
            );
        }
        let errors = parse("bad.yaml", "kind: Agent\nname: Bo\nname: Al\n").unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "bad.yaml:3:1: the key 'name' appears twice in one mapping: give it once"
        );
    }

    #[test]
    fn a_wrong_type_is_said_in_json_terms() {
        let text = "kind: Agent\nname: Bo\nrole: r\nprovider: offline\nmodel: m\n\
                    modelParameters:\n  temperature: hot\n";
        let errors = parse("types.yaml", text).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "types.yaml:7:3: modelParameters.temperature: expected a number, got the string \"hot\""
        );
        let text = "kind: Agent\nname: Bo\nrole: r\nprovider: offline\nmodel: m\n\
                    modelParameters:\n  maxTokens: many\n";
        let errors = parse("types.yaml", text).unwrap_err();
        assert!(
            errors[0].to_string().ends_with(
                "modelParameters.maxTokens: expected a whole number from 0 to 4294967295, got the string \"many\""
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn every_item_of_a_list_is_checked_past_one_that_is_wrong() {
        // The first step lacks its instructions, the second's time-out is no number, the
        // third has a field no step has, and one skill is no string: each is said at its own
        // item, as the file numbers them, not only the first.
        let text = "\
kind: Workflow
name: Study
description: d
participatingAgents: [Ada]
configuration:
  steps:
    - id: a
      name: A
      type: analysis
      description: d
      expectedOutput: Notes.
    - id: b
      name: B
      type: analysis
      description: d
      instructions: i
      expectedOutput: Notes.
      timeoutMinutes: soon
    - id: c
      name: C
      type: analysis
      description: d
      instructions: i
      expectedOutput: Notes.
      requiredSkills: [research, 7]
      colour: red
";
        let shown: Vec<String> = parse("w.yaml", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with(
                "w.yaml:7:7: configuration.steps[0].instructions: this field is required"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with(
                "w.yaml:18:7: configuration.steps[1].timeoutMinutes: expected a number"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with(
                "w.yaml:25:34: configuration.steps[2].requiredSkills[1]: expected a string"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[3].starts_with("w.yaml:26:7: configuration.steps[2].colour: unknown field"),
            "{shown:#?}"
        );
    }

    #[test]
    fn every_wrong_field_of_a_document_is_said_in_file_order() {
        let text = "kind: Agent\nname: Bo\nrole: r\nskills: x\nprovider: offline\nmodel: m\n\
                    modelParameters:\n  temperature: hot\nnickname: B\n";
        let shown: Vec<String> = parse("types.yaml", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert!(
            shown[0].starts_with("types.yaml:4:1: skills: expected a list"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("types.yaml:8:3: modelParameters.temperature: expected a number"),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with("types.yaml:9:1: nickname: unknown field"),
            "{shown:#?}"
        );
        // A required field of the wrong type is said once, not again as missing.
        let text = "kind: Agent\nname: Bo\nrole: [r]\nprovider: offline\nmodel: m\n";
        let errors = parse("types.yaml", text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("types.yaml:3:1: role: expected a string")
        );
    }

    #[test]
    fn an_infinite_key_is_a_name() {
        let errors = parse(
            "bad.yaml",
            "kind: Agent\nname: Bo\n.inf: 1\nrole: r\nprovider: offline\nmodel: m\n",
        )
        .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "bad.yaml:3:1: inf: unknown field; check its spelling against the API reference"
        );
    }

    const FROM_TEMPLATE: &str = "\
kind: Workflow
name: Inspections
template: Implement a feature
agents:
  security: Sasha
  api: 5f0c7d2e-8d1c-4f5e-9a53-3f2b1c0d9e8a
coordinatorAgentId: Meta
";

    #[test]
    fn a_workflow_from_a_template_names_its_agents_by_role() {
        let documents = parse("team.yaml", FROM_TEMPLATE).unwrap();
        assert_eq!(documents[0].kind(), Kind::Workflow);
        let Spec::FromTemplate(spec) = &documents[0].spec else {
            panic!(
                "not read as a workflow from a template: {:?}",
                documents[0].spec
            )
        };
        assert_eq!(spec.template, "Implement a feature");
        let refs: Vec<_> = documents[0]
            .agent_refs()
            .into_iter()
            .map(|r| (r.pointer, r.reference))
            .collect();
        assert_eq!(
            refs,
            [
                (
                    "/agents/api".to_owned(),
                    "5f0c7d2e-8d1c-4f5e-9a53-3f2b1c0d9e8a".to_owned()
                ),
                ("/agents/security".to_owned(), "Sasha".to_owned()),
                ("/coordinatorAgentId".to_owned(), "Meta".to_owned()),
            ]
        );
        assert_eq!(
            documents[0].place("/agents/security"),
            Some(Place { line: 5, column: 3 })
        );
    }

    #[test]
    fn a_workflow_is_made_from_a_template_or_from_steps_not_both() {
        let text = format!("{FROM_TEMPLATE}participatingAgents: [Sasha]\n");
        let errors = parse("team.yaml", &text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("team.yaml:8:1: participatingAgents: a workflow made from a template"),
            "{errors:?}"
        );
        let errors =
            parse("team.yaml", &FROM_TEMPLATE.replace("template:", "templat:")).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.to_string()
                    == "team.yaml:1:1: participatingAgents: this field is required"),
            "{errors:?}"
        );
    }

    #[test]
    fn field_paths_read_as_yaml() {
        assert_eq!(
            field_path("/configuration/steps/1/dependsOn"),
            "configuration.steps[1].dependsOn"
        );
        assert_eq!(field_path(""), "");
    }
}
