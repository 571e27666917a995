// Recent events: the filters of GET /api/events, paging, and rows that expand to their
// properties with old and new values.

import { getJson } from './api.js';
import { el, formatTime, formatValue, setRows, showError } from './dom.js';

const FILTERS = ['event_type', 'entity_type', 'attribute_name', 'new_value', 'date', 'date_to'];

export class EventsPanel {
  constructor(root, onAuthError) {
    this.form = root.querySelector('#filters');
    this.body = root.querySelector('#events-table tbody');
    this.error = root.querySelector('#events-error');
    this.window = root.querySelector('#events-window');
    this.pageInfo = root.querySelector('#page-info');
    this.prev = root.querySelector('#prev-page');
    this.next = root.querySelector('#next-page');
    this.onAuthError = onAuthError;
    this.page = 1;
    this.totalPages = 0;
    this.request = 0;
    // The filters last applied: paging and the periodic refresh keep them, so a half-typed
    // filter is not applied before the form is submitted.
    this.applied = null;

    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.apply();
    });
    this.form.addEventListener('reset', () => {
      // The form's fields are cleared after this event; load once they are.
      window.setTimeout(() => this.apply());
    });
    this.prev.addEventListener('click', () => this.go(this.page - 1));
    this.next.addEventListener('click', () => this.go(this.page + 1));
  }

  /** Applies the form's filters and shows their first page. */
  apply() {
    this.applied = this.filters();
    this.page = 1;
    this.load();
  }

  go(page) {
    if (page < 1 || (this.totalPages && page > this.totalPages)) return;
    this.page = page;
    this.load();
  }

  /**
   * Reloads the page shown, so events stored since appear (and the totals grow), unless a row
   * is open: its properties are being read and stay where they are.
   */
  refresh() {
    if (this.body.querySelector('tr.detail:not([hidden])')) return Promise.resolve();
    return this.load();
  }

  /** The form's filters: empty fields are left out; times are UTC. */
  filters() {
    const data = new FormData(this.form);
    const filters = { page_size: data.get('page_size') };
    for (const name of FILTERS) {
      const value = String(data.get(name) || '').trim();
      if (value) filters[name] = value;
    }
    return filters;
  }

  async load() {
    const request = ++this.request;
    if (!this.applied) this.applied = this.filters();
    const query = { ...this.applied, page: this.page };
    let list;
    try {
      list = await getJson('/api/events', query);
    } catch (e) {
      if (request !== this.request) return;
      if (e.isAuthentication) {
        this.onAuthError(e);
        return;
      }
      showError(this.error, e.message);
      return;
    }
    if (request !== this.request) return;
    showError(this.error, '');
    this.render(list, query);
  }

  render(list, query) {
    const { paging } = list;
    this.totalPages = paging.total_pages;
    const rows = [];
    for (const event of list.data) rows.push(...eventRows(event));
    if (rows.length === 0) {
      rows.push(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No events match.')));
    }
    setRows(this.body, rows);
    const span = query.date || query.date_to
      ? `from ${query.date || '…'} to ${query.date_to || '…'} UTC`
      : 'in the last period up to now';
    this.window.textContent = `${paging.total_entries.toLocaleString('en-US')} events ${span}`;
    this.pageInfo.textContent = paging.total_pages
      ? `Page ${paging.page_number} of ${paging.total_pages}`
      : 'No pages';
    this.prev.disabled = paging.page_number <= 1;
    this.next.disabled = paging.page_number >= paging.total_pages;
  }
}

/** The summary row of an event and its (hidden) detail row. */
function eventRows(event) {
  const properties = event.properties && typeof event.properties === 'object'
    ? Object.entries(event.properties) : [];
  const detail = el('tr', { class: 'detail', hidden: true },
    el('td', { colspan: 6 }, propertiesTable(event, properties)));
  const toggle = el('button', {
    type: 'button', class: 'toggle', 'aria-expanded': 'false',
    'aria-label': 'Show properties', 'data-event-id': event.id,
  }, '▸');
  toggle.addEventListener('click', () => {
    const open = detail.hidden;
    detail.hidden = !open;
    toggle.setAttribute('aria-expanded', String(open));
    toggle.textContent = open ? '▾' : '▸';
  });
  const changed = properties
    .filter(([, v]) => v && typeof v === 'object' && 'old_value' in v)
    .map(([name, v]) => `${name}: ${formatValue(v.old_value)} → ${formatValue(v.new_value)}`);
  const summary = el('tr', { class: 'event', 'data-event-id': event.id },
    el('td', {}, toggle),
    el('td', { class: 'time' }, formatTime(event.event_time)),
    el('td', {}, event.event_type),
    el('td', {}, event.entity_type),
    el('td', { class: 'id' }, event.entity_id),
    el('td', {}, changed.join(', ')));
  return [summary, detail];
}

function propertiesTable(event, properties) {
  const rows = properties.map(([name, value]) => {
    const change = value && typeof value === 'object' ? value : { new_value: value };
    const old = 'old_value' in change
      ? el('td', {}, formatValue(change.old_value))
      : el('td', { class: 'muted' }, '(not tracked)');
    return el('tr', {}, el('th', { scope: 'row' }, name), old,
      el('td', {}, formatValue(change.new_value)));
  });
  return el('div', { class: 'properties' },
    el('table', {},
      el('thead', {}, el('tr', {}, el('th', {}, 'Attribute'), el('th', {}, 'Old value'),
        el('th', {}, 'New value'))),
      el('tbody', {}, ...rows)),
    el('p', { class: 'muted' }, `Event ${event.id}`,
      event.changed_by ? ` · changed by ${event.changed_by}` : ''));
}
