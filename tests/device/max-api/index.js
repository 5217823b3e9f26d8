// Stand-in for Node for Max's `max-api` (the module Max injects into node.script), enough
// for the gary4live device script: handlers for the messages the device's patcher sends,
// outlets back to the patcher, the Max console. A test driver plays the patcher through
// `harness`: it sends messages (what a musician's clicks send) and sees every outlet.
"use strict";
const { EventEmitter } = require("node:events");

const handlers = new Map(); // message name -> [handler, ...]
const dicts = new Map();

/** What the patcher side sees: `outlet` events ([...args]) and `post` events (text). */
const harness = new EventEmitter();
harness.posts = [];
harness.outlets = [];

/** Send a message into the script as the patcher would: `name arg1 arg2 ...`. Max calls the
 *  message's handlers, else the "*" handlers with the name first; an unhandled message is
 *  reported on the Max console. Returns what the handlers return (awaited). */
harness.send = async function send(name, ...args) {
  const own = handlers.get(name) || [];
  const any = handlers.get("*") || [];
  if (own.length === 0 && any.length === 0) {
    post(`node.script: no handler for message "${name}"`);
    return [];
  }
  const results = [];
  for (const fn of own) results.push(await fn(...args));
  for (const fn of any) results.push(await fn(name, ...args));
  return results;
};

/** Names of the messages the script handles (to check a driver only sends real ones). */
harness.handled = () => [...handlers.keys()];

function addHandler(name, fn) {
  if (typeof fn !== "function") throw new TypeError(`handler for ${name} is not a function`);
  if (!handlers.has(name)) handlers.set(name, []);
  handlers.get(name).push(fn);
}

function addHandlers(map) {
  for (const [name, fn] of Object.entries(map)) addHandler(name, fn);
}

function removeHandler(name, fn) {
  const list = handlers.get(name) || [];
  const i = list.indexOf(fn);
  if (i >= 0) list.splice(i, 1);
}

function removeHandlers(name) {
  handlers.delete(name);
}

function outlet(...args) {
  harness.outlets.push(args);
  harness.emit("outlet", args);
  return Promise.resolve();
}

function outletBang() {
  return outlet("bang");
}

function post(...args) {
  const text = args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ");
  harness.posts.push(text);
  harness.emit("post", text);
  return Promise.resolve();
}

async function getDict(id) {
  return dicts.has(id) ? JSON.parse(JSON.stringify(dicts.get(id))) : {};
}

async function setDict(id, value) {
  dicts.set(id, JSON.parse(JSON.stringify(value)));
  return getDict(id);
}

async function updateDict(id, path, value) {
  const dict = dicts.get(id) || {};
  const keys = String(path).split(".");
  let node = dict;
  for (const key of keys.slice(0, -1)) node = node[key] = node[key] || {};
  node[keys[keys.length - 1]] = value;
  dicts.set(id, dict);
  return getDict(id);
}

const POST_LEVELS = Object.freeze({ ERROR: "error", INFO: "info", WARN: "warn" });
const MESSAGE_TYPES = Object.freeze({ ALL: "all", BANG: "bang", DICT: "dict", NUMBER: "number", LIST: "list" });

module.exports = {
  addHandler, addHandlers, removeHandler, removeHandlers, outlet, outletBang, post,
  getDict, setDict, updateDict, POST_LEVELS, MESSAGE_TYPES, harness,
};
