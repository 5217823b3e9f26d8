// g4l's docs page: Swagger UI on the server's own OpenAPI document (no CDN).
// "Authorize" takes the API key; it is sent as X-API-Key with every "Try it out" call.
window.ui = SwaggerUIBundle({
  url: "../openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: true,
});
