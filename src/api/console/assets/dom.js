// Small DOM and formatting helpers. Data from the server (entity ids, values, reasons) is
// untrusted: it only ever becomes text nodes, never markup.

/** An element with attributes (`class`, `colspan`, `data-*`, …) and children (text or nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/**
 * Text that may wrap after `.`, `-`, `_`, `/` and `:` only (topic names, ids), so a narrow column
 * breaks `ehealth-careplan.status` between its words rather than between any two letters.
 */
export function breakable(text) {
  const fragment = document.createDocumentFragment();
  for (const part of String(text).split(/(?<=[.\-_/:])/)) {
    if (fragment.childNodes.length > 0) fragment.append(document.createElement('wbr'));
    fragment.append(part);
  }
  return fragment;
}

/** Replaces the rows of a table section. */
export function setRows(section, rows) {
  section.replaceChildren(...rows);
}

/** Shows `message` in an error line, or hides it when `message` is empty. */
export function showError(node, message) {
  node.textContent = message || '';
  node.hidden = !message;
}

/** `2026-12-03 04:31:02Z` for an RFC 3339 time; `–` when there is none. */
export function formatTime(value) {
  if (!value) return '–';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return `${date.toISOString().slice(0, 19).replace('T', ' ')}Z`;
}

/** A count with thousands separators; `–` when unknown. */
export function formatCount(value) {
  if (value === undefined || value === null) return '–';
  return Number(value).toLocaleString('en-US');
}

/** A rate with one decimal below 10; `–` when unknown. */
export function formatRate(value) {
  if (value === undefined || value === null || !Number.isFinite(value)) return '–';
  return value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString('en-US');
}

/** `3 h 20 min` for a number of seconds. */
export function formatDuration(seconds) {
  if (seconds === undefined || seconds === null) return 'off';
  const units = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  const parts = [];
  let rest = Math.round(seconds);
  for (const [unit, size] of units) {
    if (rest >= size && parts.length < 2) {
      parts.push(`${Math.floor(rest / size)} ${unit}`);
      rest %= size;
    }
  }
  return parts.length ? parts.join(' ') : '0 s';
}

/** A JSON value as the events API stores it: strings bare, `null` as `null`, others as JSON. */
export function formatValue(value) {
  if (value === undefined) return '';
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}
